"""The teacher pass's memory: logits chunked on the device vs materialised for a whole batch.

The builtin SmolLM2-135M teacher (vocabulary 49,152) over one batch of 8 × 512 tokens of the default
corpus, top-0.95-100, in a fresh process per measurement: the pass's peak resident memory above
what the loaded teacher already holds (VmHWM, reset through /proc/self/clear_refs just before the
batch, minus VmRSS then), with the output head
and the truncation run `teacher.CHUNK_POSITIONS` positions at a time against all 4,096 at once (the
full (B·T, V) float32 logits, as the pass did before). Side by side, three repeats each, medians.

Metric: teacher_chunk_peak_mem_ratio = chunked peak / full peak (goal ≤ 0.25).

And the distributed pass: `pdsweep logits generate --ranks 2` (2 ranks × 1 thread) against one rank
at 1 thread, SmolLM2-135M over 12,288 positions of the default corpus in 12 shards, wall clock of the
whole command (start-up included), interleaved, three repeats; the two stores' shards must be
byte-identical.

Metric: teacher_pass_ranks_speedup = 1-rank time / 2-rank time (goal ≥ 1.8).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import summary, write  # noqa: E402

REPEATS, BATCH, SEQ = 3, 8, 512

CHILD = """
import json, sys, torch
from pdsweep.logits import teacher, truncation
from pdsweep.spec import teacher_spec
chunk = int(sys.argv[1])
t = teacher.load(teacher_spec("builtin:smollm2-135m"))
g = torch.Generator().manual_seed(0)
x = torch.randint(0, t.vocab_size, ({batch}, {seq}), generator=g)
keep = lambda logits: truncation.top_p_k(logits, 0.95, 100)
def status(key):
    line = next(x for x in open("/proc/self/status") if x.startswith(key + ":"))
    return int(line.split()[1])  # kB
with torch.no_grad():
    t.sparse(x[:1, :16], keep, chunk)  # warm up: lazily allocated buffers
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    before = status("VmRSS")
    parts = t.sparse(x, keep, chunk)
    after = status("VmHWM")
print(json.dumps({{"peak_mb": (after - before) / 1024, "rows": sum(p.count.shape[0] for p in parts)}}))
"""


def peak(chunk: int) -> float:
    code = CHILD.format(batch=BATCH, seq=SEQ)
    out = subprocess.run([sys.executable, "-c", code, str(chunk)], check=True, capture_output=True, text=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["rows"] == BATCH * SEQ
    return float(row["peak_mb"])


PASS_POSITIONS, PASS_SHARD = 12288, 1024
RUN = "student: tiny-s\nteacher: builtin:smollm2-135m\ndata: {tokenizer: teacher, seq_len: 256}\nlogits: {top_p: 0.95, top_k: 100}\n"


def ranks_speedup() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run.yaml"
        run.write_text(RUN)
        base = [sys.executable, "-m", "pdsweep.cli", "logits", "generate", str(run), "--limit", str(PASS_POSITIONS)]
        base += ["--shard-positions", str(PASS_SHARD)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([*base, "--limit", "256", "--out", f"{tmp}/warm"], check=True, env=env, capture_output=True)
        one, two, one_pass, two_pass = [], [], [], []
        for r in range(REPEATS):
            for ranks, times, passes in ((1, one, one_pass), (2, two, two_pass)):
                out = Path(tmp) / f"r{r}-{ranks}"
                t = time.perf_counter()
                cmd = [*base, "--ranks", str(ranks), "--out", str(out)]
                done = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
                times.append(time.perf_counter() - t)
                # The pass itself (each rank's own time, its teacher loaded): the slowest rank's.
                passes.append(max(float(x) for x in re.findall(r"generated now in ([0-9.]+) s", done.stdout)))
            a, b = Path(tmp) / f"r{r}-1", Path(tmp) / f"r{r}-2"
            names = sorted(p.name for p in a.glob("shard-*.pdl"))
            assert len(names) == PASS_POSITIONS // PASS_SHARD and names == sorted(p.name for p in b.glob("shard-*.pdl"))
            assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names), "2 ranks wrote other bytes"
            shutil.rmtree(a)
            shutil.rmtree(b)
    o, t2, op, tp = summary(one), summary(two), summary(one_pass), summary(two_pass)
    return {
        "metric": "teacher_pass_ranks_speedup",
        "value": round(op["median"] / tp["median"], 3),
        "unit": "x",
        "goal": ">= 1.8",
        "one_rank_pass_s": op,
        "two_ranks_pass_s": tp,
        "wall_clock_speedup": round(o["median"] / t2["median"], 3),
        "one_rank_wall_s": o,
        "two_ranks_wall_s": t2,
        "positions_per_s_one_rank": round(PASS_POSITIONS / op["median"], 1),
        "note": f"SmolLM2-135M, {PASS_POSITIONS} positions in {PASS_POSITIONS // PASS_SHARD} shards, top-0.95-100, "
        "1 thread per rank; value: the pass's time (the slowest rank's, its teacher loaded); wall_clock_speedup: "
        "the whole `pdsweep logits generate` command, with each process's start-up (~7 s: torch, the teacher, the "
        "tokens); shards byte-identical",
    }


def main() -> None:
    from pdsweep.logits import teacher

    ranks = ranks_speedup()
    chunked, full = [], []
    for _ in range(REPEATS):  # interleaved: the machine's load falls on both alike
        chunked.append(peak(teacher.CHUNK_POSITIONS))
        full.append(peak(BATCH * SEQ))
    c, f = summary(chunked), summary(full)
    write(
        "bench_teacher",
        [
            {
                "metric": "teacher_chunk_peak_mem_ratio",
                "value": round(c["median"] / f["median"], 3),
                "unit": "ratio",
                "goal": "<= 0.25",
                "chunked_peak_mb": c,
                "full_peak_mb": f,
                "note": f"SmolLM2-135M (V = 49,152), one batch of {BATCH} × {SEQ}, top-0.95-100, fp32 on CPU; "
                f"peak RSS above the loaded teacher; chunk = {teacher.CHUNK_POSITIONS} positions vs all "
                f"{BATCH * SEQ}",
            },
            ranks,
        ],
    )


if __name__ == "__main__":
    main()
