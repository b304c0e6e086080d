"""A scripted LangChain chat model for tests: it records every prompt it is sent and
answers from a list of replies (the last one repeats) or from a function of the prompt.
A real ``BaseChatModel``, so it goes through ``invoke``, callbacks and ``with_config``
like ChatOpenAI does."""
from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field

Respond = Callable[[list[BaseMessage]], str]


class ScriptedChat(BaseChatModel):
    """``replies``: answers in order, the last repeated once they run out (no replies:
    empty answers). ``respond``, when given, computes each answer from the prompt
    instead. ``calls`` holds the messages of every call, in order."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    replies: list[str] = Field(default_factory=list)
    respond: Any = None
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    lock: Any = Field(default_factory=threading.Lock, exclude=True)

    @classmethod
    def of(cls, *replies: str) -> "ScriptedChat":
        return cls(replies=list(replies))

    @classmethod
    def answering(cls, respond: Respond) -> "ScriptedChat":
        return cls(respond=respond)

    @property
    def _llm_type(self) -> str:
        return "poise-scripted"

    def _generate(self, messages: list[BaseMessage], stop: Sequence[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        with self.lock:
            index = len(self.calls)
            self.calls.append(list(messages))
        if self.respond is not None:
            text = self.respond(list(messages))
        elif self.replies:
            text = self.replies[min(index, len(self.replies) - 1)]
        else:
            text = ""
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


def prompt_chars(messages: Sequence[BaseMessage]) -> int:
    """Characters sent in one call (all message contents)."""
    return sum(len(m.content) if isinstance(m.content, str) else len(str(m.content))
               for m in messages)


__all__ = ["ScriptedChat", "prompt_chars"]
