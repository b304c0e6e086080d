"""One place that turns a model string into a LangChain chat model: ``get_model``.

The model string for a role (scientist, coder, analyst, verifier (the consistency
judge), objective (writes the run's objective from the directive), steer (reads a
person's messages in a steering session)) is resolved in order:

1. an explicit value in the run context: ``context.models[role]``, then ``context.model``
   (a ``Context`` object or a plain dict with those keys);
2. the environment: ``POISE_MODEL_<ROLE>`` (e.g. ``POISE_MODEL_CODER``), then, for
   objective and steer, the scientist's setting (they are the scientist's jobs unless
   configured apart), then ``POISE_MODEL``.

Unset, empty or ``"builtin"`` means no model: ``get_model`` returns None and the caller
uses the builtin offline agents (agents/builtin/).

``openai:<model>`` builds ``langchain_openai.ChatOpenAI`` with ``OPENAI_API_KEY`` and
``OPENAI_BASE_URL`` (OpenAI itself, a local ``vllm serve``, any OpenAI-compatible
server); a base URL without a key gets a placeholder key, as local servers ignore it.
Any other ``provider:model`` goes through ``langchain.chat_models.init_chat_model``
(the provider's package must be installed). The key is handed to the client only: it is
never logged, put in an error message or stored by POISE.

The returned runnable carries a run name ``<role> LLM`` and the tags ``<role>`` and
``role:<role>``, so LangSmith traces (LANGSMITH_TRACING=true) show which agent made each
call (inside a run, graph/tracing.py names every LLM call the same way).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable

ROLES = ("scientist", "coder", "analyst", "verifier", "objective", "steer")
FALLBACK = {"objective": "scientist", "steer": "scientist"}
BUILTIN = "builtin"
TIMEOUT_S = 120.0           # per request; a stuck server must not stall a round forever
MAX_RETRIES = 2             # the client's own retries on transport errors / 429 / 5xx
LOCAL_PLACEHOLDER_KEY = "not-needed"  # local OpenAI-compatible servers ignore the key

ChatModel = Runnable  # a chat model bound with run name and tags (``.with_config``)


class ConfigError(ValueError):
    """The model configuration cannot work; the message says what to set."""


def model_spec(role: str, context: Any = None) -> tuple[str | None, str]:
    """The model string for ``role`` and where it came from (for error messages)."""
    if role not in ROLES:
        raise ValueError(f"unknown agent role {role!r}; expected one of {', '.join(ROLES)}")
    models = _field(context, "models")
    if isinstance(models, Mapping) and _clean(models.get(role)):
        return _clean(models[role]), f"context.models[{role!r}]"
    if _clean(_field(context, "model")):
        return _clean(_field(context, "model")), "context.model"
    chain = [role] + ([FALLBACK[role]] if role in FALLBACK else [])
    for var in [f"POISE_MODEL_{r.upper()}" for r in chain] + ["POISE_MODEL"]:
        if _clean(os.environ.get(var)):
            return _clean(os.environ[var]), var
    return None, "default"


def resolved_models(context: Any = None) -> dict[str, str]:
    """Every role's model string as a run saves it (``builtin`` for none)."""
    out = {}
    for role in ROLES:
        spec, _ = model_spec(role, context)
        out[role] = BUILTIN if spec is None or spec.lower() == BUILTIN else spec
    return out


def check_mix(context: Any = None) -> None:
    """Raise ``ConfigError`` for a role mix that cannot work: an LLM scientist writes
    free-form proposals that only an LLM coder can implement (the builtin coder renders
    builtin genomes)."""
    scientist, where = model_spec("scientist", context)
    coder, _ = model_spec("coder", context)
    if scientist and scientist.lower() != BUILTIN and (coder is None
                                                       or coder.lower() == BUILTIN):
        raise ConfigError(f"{where}={scientist} gives the scientist a model but the coder "
                          "is builtin, and the builtin coder can only render builtin "
                          "proposals: set POISE_MODEL_CODER too (or POISE_MODEL / --model "
                          "for every role), or leave the scientist builtin")


def get_model(role: str, context: Any = None) -> ChatModel | None:
    """The chat model configured for ``role``, or None for the builtin offline agent.

    Raises ``ConfigError`` for a string that cannot work (no provider, an OpenAI model
    without a key or base URL, a provider whose package is missing)."""
    spec, source = model_spec(role, context)
    if spec is None or spec.lower() == BUILTIN:
        return None
    provider, sep, name = spec.partition(":")
    provider, name = provider.strip().lower(), name.strip()
    if not sep or not provider or not name:
        raise ConfigError(f"{source}={spec!r} is not a model string: use 'provider:model' "
                          "(e.g. openai:gpt-4o-mini) or 'builtin' for the offline agents")
    model = _openai(spec, source, name) if provider == "openai" else \
        _other(spec, source, provider, name)
    return model.with_config(run_name=f"{role} LLM", tags=[role, f"role:{role}"],
                             metadata={"poise_role": role, "poise_model": spec})


def _openai(spec: str, source: str, name: str) -> BaseChatModel:
    from langchain_openai import ChatOpenAI

    key = _clean(os.environ.get("OPENAI_API_KEY"))
    base_url = _clean(os.environ.get("OPENAI_BASE_URL"))
    if key is None and base_url is None:
        raise ConfigError(f"{source}={spec} needs OPENAI_API_KEY "
                          "(or OPENAI_BASE_URL for a local server)")
    return ChatOpenAI(model=name, api_key=key or LOCAL_PLACEHOLDER_KEY, base_url=base_url,
                      timeout=TIMEOUT_S, max_retries=MAX_RETRIES)


def _other(spec: str, source: str, provider: str, name: str) -> BaseChatModel:
    from langchain.chat_models import init_chat_model

    try:
        return init_chat_model(name, model_provider=provider, timeout=TIMEOUT_S,
                               max_retries=MAX_RETRIES)
    except ImportError as e:
        raise ConfigError(f"{source}={spec}: {e} (or use openai:<model>, with "
                          "OPENAI_BASE_URL for any OpenAI-compatible server)") from None
    except ValueError as e:  # unknown provider, or the provider's own config check
        raise ConfigError(f"{source}={spec}: {e}") from None


def _field(context: Any, name: str) -> Any:
    if context is None:
        return None
    if isinstance(context, Mapping):
        return context.get(name)
    return getattr(context, name, None)


def _clean(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return value.strip() or None


__all__ = ["get_model", "model_spec", "resolved_models", "check_mix", "ConfigError", "ROLES",
           "BUILTIN", "ChatModel"]


OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
CONNECT_TIMEOUT_S = 3.0


def check_reachable(role: str, context: Any = None,
                    timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """Raise ``ConfigError``, within ``timeout_s``, if ``role``'s model is served over
    the OpenAI API (``openai:<model>``) and its server (``OPENAI_BASE_URL``, else
    OpenAI's) does not accept a connection. Returns the URL checked (None: nothing to
    check). A command calls it once, before it writes anything; a server that accepts
    the connection but never answers is left to the per-request timeout."""
    import socket
    from urllib.parse import urlsplit

    spec, source = model_spec(role, context)
    if spec is None or spec.lower() == BUILTIN or spec.partition(":")[0].strip().lower() \
            != "openai":
        return None
    url = _clean(os.environ.get("OPENAI_BASE_URL")) or OPENAI_DEFAULT_URL
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise ConfigError(f"OPENAI_BASE_URL={url!r} is not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"OPENAI_BASE_URL={url!r} is not an http(s) URL "
                          "(e.g. http://127.0.0.1:8000/v1)")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"cannot reach the model server of {source}={spec} at {url}: "
                          f"{e.strerror or e or 'no answer'}; start it, or fix "
                          "OPENAI_BASE_URL") from None
    return url
