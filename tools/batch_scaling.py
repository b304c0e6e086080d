"""How much cheaper a token gets when a batch is 3x larger: the compiled decode, the
trained forward + backward and the no-grad forward of the fast engine, on the default
warm start, 16 prompts x 8 against 48 x 8, one thread, best of 4 (docs/throughput.md,
"batching several seeds into one process").

    python tools/batch_scaling.py HOME   # HOME holds (or builds) the default warm start
"""
import sys
import time
from pathlib import Path

import torch

from evals.tasks import BOS, PromptStream, encode
from trainers.local import compiled, engine
from trainers.local.model import left_pad
from trainers.local.warmstart import WarmStartConfig, load_or_build


def best(fn, reps: int = 4) -> float:
    times = []
    for _ in range(reps):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def main(home: Path) -> None:
    torch.set_num_threads(1)
    model = load_or_build(WarmStartConfig(), home)
    compiled.prepare(model.cfg)
    stream = PromptStream(0, "search")
    for prompts in (16, 48):
        problems = [p for p in stream.next_batch(prompts) for _ in range(8)]
        ids, pmask = left_pad([[BOS] + encode(p.prompt) for p in problems])

        def generate():  # the same draws each time: every timed decode makes ``out``
            return compiled.generate(model, ids, pmask, 80, 1.0,
                                     torch.Generator().manual_seed(0), group_size=8)
        out = generate()
        tokens = float(out.mask.sum())
        decode = best(generate)

        def train_step():
            engine.response_logprobs(model, ids, pmask, out.tokens, out.mask,
                                     group_size=8).sum().backward()

        def no_grad():
            with torch.no_grad():
                engine.response_logprobs(model, ids, pmask, out.tokens, out.mask,
                                         group_size=8)
        print(f"{ids.shape[0]} rows, {tokens:.0f} response tokens: decode "
              f"{decode / tokens * 1e6:.1f} us/token, "
              f"forward + backward {best(train_step) / tokens * 1e6:.1f}, no-grad forward "
              f"{best(no_grad) / tokens * 1e6:.1f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
