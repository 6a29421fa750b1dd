"""Scale on paper: hours of video per node-hour and what 100,000 hours take on 100 nodes, from measured figures.

    python bench/bench_scale.py [--hours 100000] [--nodes 100] [--cores-per-node 16]

Measures nothing itself: it reads bench/results/preprocess.json (the Ray preprocess job's end-to-end times
realtime on this 2-core machine, alignment and ASR paths, and the utterances it made per hour of audio),
score.json (the Ray score job's utterances/s here) and gpu.json (scoring measured on a GPU, when a GPU run
exists), and combines them:

  node-seconds per hour of video = 3600 / x_realtime(preprocess) + utterances per hour / utterances/s(score)
  hours of video per node-hour   = 3600 / that
  wall hours for H hours on N nodes = H / (N x hours per node-hour)   (perfect scaling: an upper bound)

Rows:
- "measured, this machine" (2 cores here): the measured figures as they are.
- "estimate, CPU node of C cores": the 2-core figures x C/2 (the jobs run one actor per core and share
  nothing but the input listing; linear scaling is an assumption, labelled as such).
- "estimate, GPU node": preprocessing on the node's C CPU cores as above (alignment, VAD, diarization and
  openSMILE are CPU code; the GPU would only take whisper and the speaker encoder), scoring at the GPU's
  measured rate when gpu.json exists. Labelled an estimate: the GPU preprocess path has not been timed.
- "driver limit" (when bench/results/driver.json exists, from bench/bench_driver.py): one driver core is
  saturated when its CPU equals one core: with bench_driver.py's model (fixed CPU-s per second, growing with
  the pool's actors, plus variable CPU-s per utterance) at the worker cores where fixed + cores x variable /
  workers' CPU per utterance = 1 (older files: 100 / the measured ratio); the 100-node figure is recomputed
  with min(nodes, nodes one driver feeds).
Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import RESULTS, write_result  # noqa: E402


def load(name: str) -> dict | None:
    try:
        return json.loads((RESULTS / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def per_hour(x_realtime: float, utt_per_hour: float, score_ups: float) -> dict:
    pre_s = 3600.0 / x_realtime
    score_s = utt_per_hour / score_ups
    total = pre_s + score_s
    return {"preprocess_node_s_per_video_hour": round(pre_s, 1), "score_node_s_per_video_hour": round(score_s, 2),
            "video_hours_per_node_hour": round(3600.0 / total, 2)}


def cluster(row: dict, hours: float, nodes: int) -> dict:
    rate = row["video_hours_per_node_hour"]
    return row | {"wall_hours_for_job": round(hours / (nodes * rate), 1), "node_hours_for_job": round(hours / rate)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=100_000)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--cores-per-node", type=int, default=16)
    args = ap.parse_args()
    pre, score, gpu = load("preprocess"), load("score"), load("gpu")
    if (pre is None or score is None or "ray" not in score.get("figures", {})
            or "ray" not in pre.get("figures", {}).get("align_path", {})):
        print("[bench] scale: needs bench/results/preprocess.json and score.json (with the Ray figure); run them first")
        sys.exit(1)
    pf, sf = pre["figures"], score["figures"]
    local_cores = pf.get("cpus") or 2
    score_ups = sf["ray"]["utterances_per_s"]["median"]
    figures: dict = {"job": {"video_hours": args.hours, "nodes": args.nodes},
                     "sources": {"preprocess": f"{pre['time']} ({pre['git']})", "score": f"{score['time']} ({score['git']})"},
                     "score_utterances_per_s_measured": round(score_ups, 1),
                     # score.json is the default encoder's (MPNet since it became the default; older files: MiniLM)
                     "score_encoder": sf.get("encoder", score.get("figures", {}).get("config", {}).get("encoder", "minilm"))}
    for path in ("align", "asr"):
        ray = pf[f"{path}_path"]["ray"]
        utt_per_hour = ray["utterances"] / (ray["audio_seconds"] / 3600.0)
        measured = per_hour(ray["x_realtime"], utt_per_hour, score_ups)
        scale = args.cores_per_node / local_cores
        cpu_node = per_hour(ray["x_realtime"] * scale, utt_per_hour, score_ups * scale)
        rows = {
            "measured_this_machine": cluster(measured, args.hours, args.nodes) | {"cores": local_cores},
            f"estimate_cpu_node_{args.cores_per_node}_cores": cluster(cpu_node, args.hours, args.nodes),
        }
        if gpu is not None:
            gpu_ups = gpu["figures"]["score"]["fp32"]["batched_1024"]["utterances_per_s"]["median"]
            gpu_node = per_hour(ray["x_realtime"] * scale, utt_per_hour, gpu_ups)
            rows[f"estimate_gpu_node_{args.cores_per_node}_cores"] = cluster(gpu_node, args.hours, args.nodes) | {
                "gpu": gpu["figures"].get("device"), "gpu_score_utterances_per_s_measured": round(gpu_ups),
                "gpu_score_encoder": gpu["figures"].get("encoder", "minilm (bench_gpu.py --encoder DIR)")}
        figures[f"{path}_path"] = {"x_realtime_measured": ray["x_realtime"],
                                   "utterances_per_video_hour_measured": round(utt_per_hour)} | rows
    driver = load("driver")
    if driver is not None:
        limit = {}
        for job in ("preprocess", "score"):
            fig = driver["figures"].get(job) or {}
            model, pct = fig.get("model"), (fig.get("steady") or {}).get("driver_over_cluster_cpu_pct")
            if model and model.get("max_worker_cores_per_driver"):
                # fixed + variable (bench_driver.py's model): one driver core saturates at these worker cores
                cores = model["max_worker_cores_per_driver"]
                limit[job] = {"driver_over_worker_cpu_pct_at_worker_cores":
                              model["driver_over_worker_cpu_pct_at_worker_cores"],
                              "max_worker_cores_per_driver": cores,
                              "max_nodes_per_driver": round(cores / args.cores_per_node, 1)}
            elif pct and pct > 0:  # an older driver.json: the measured ratio, as if it held at every size
                cores = 100.0 / pct
                limit[job] = {"driver_over_worker_cpu_pct": pct, "max_worker_cores_per_driver": round(cores),
                              "max_nodes_per_driver": round(cores / args.cores_per_node, 1)}
        if limit:
            nodes_fed = min(v["max_nodes_per_driver"] for v in limit.values())
            for path in ("align", "asr"):
                row = figures[f"{path}_path"][f"estimate_cpu_node_{args.cores_per_node}_cores"]
                usable = min(args.nodes, nodes_fed)
                row["driver_limited_nodes"] = usable
                row["driver_limited_wall_hours_for_job"] = round(args.hours / (usable * row["video_hours_per_node_hour"]), 1)
            figures["driver_limit"] = limit | {"source": f"{driver['time']} ({driver['git']})"}
    print(json.dumps(figures, indent=1))
    write_result("scale", figures | {"config": vars(args)}, notes=(
        "Derived, not measured: per-hour costs from preprocess.json (Ray job end to end, this machine) and "
        "score.json (Ray job), node estimates scale them linearly with cores (an assumption); the GPU node "
        "scores at the rate measured in gpu.json (the jobs' pure scoring function on that GPU) and preprocesses "
        "on its CPU cores (the GPU preprocess path is not timed). Utterances per hour of video are RAVDESS's "
        "(one short sentence per clip: dense), so scoring's share is if anything overstated."))


if __name__ == "__main__":
    main()
