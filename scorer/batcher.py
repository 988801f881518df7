"""A small dynamic batcher: requests that arrive within ``max_wait_ms`` of each other share one forward pass."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from harness.scoring.protocol import Scores


@dataclass
class _Job:
    prompts: list[str]
    responses: list[str]
    future: asyncio.Future


class DynamicBatcher:
    def __init__(self, fn: Callable[[Sequence[str], Sequence[str]], Scores], max_batch: int, max_wait_ms: float):
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.batches = 0
        self.pairs = 0
        self.busy_seconds = 0.0

    async def submit(self, prompts: list[str], responses: list[str]) -> Scores:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(prompts, responses, fut))
        return await fut

    async def run(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0].prompts)
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), timeout=remaining)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                size += len(job.prompts)
            prompts = [p for j in jobs for p in j.prompts]
            responses = [r for j in jobs for r in j.responses]
            t = time.perf_counter()
            try:
                scores = await asyncio.to_thread(self.fn, prompts, responses)
            except Exception as e:  # every waiting request gets the error; none gets a made-up score
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.busy_seconds += time.perf_counter() - t
            self.batches += 1
            self.pairs += len(prompts)
            start = 0
            for j in jobs:
                n = len(j.prompts)
                if not j.future.done():
                    j.future.set_result(Scores(scores.rewards[start : start + n], scores.costs[start : start + n]))
                start += n
