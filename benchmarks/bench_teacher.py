"""The teacher pass's memory: logits chunked on the device vs materialised for a whole batch.

The builtin SmolLM2-135M teacher (vocabulary 49,152) over one batch of 8 × 512 tokens of the default
corpus, top-0.95-100, in a fresh process per measurement: the pass's peak resident memory above
what the loaded teacher already holds (VmHWM, reset through /proc/self/clear_refs just before the
batch, minus VmRSS then), with the output head
and the truncation run `teacher.CHUNK_POSITIONS` positions at a time against all 4,096 at once (the
full (B·T, V) float32 logits, as the pass did before). Side by side, three repeats each, medians.

Metric: teacher_chunk_peak_mem_ratio = chunked peak / full peak (goal ≤ 0.25).
"""

from __future__ import annotations

import json
import subprocess
import sys
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


def main() -> None:
    from pdsweep.logits import teacher

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
            }
        ],
    )


if __name__ == "__main__":
    main()
