"""Rehearse GPU autoscaling on one machine: `annotate` and `align` on Ray's fake multi-node cluster.

    python jobs/simulate_autoscaling.py --out runs/fake_autoscaling

1. Builds a tiny run with the package's own stages on a local Ray: `synthesize` (tiny task and models),
   `prepare`, `train-annotator` (a few CPU steps).
2. Starts a fake autoscaling cluster from ``cluster/fake_autoscaling.yaml`` (``RAY_FAKE_CLUSTER=1 ray start
   --head --block --autoscaling-config=...``) on its own port and temp dir; only the CPU head is up.
3. Connects (``RayConfig.address``) and runs ``annotate`` with ``gpus_per_actor=1`` (Ray Data actors asking
   {GPU: 1}) and ``align`` with ``use_gpu=True`` (Ray Train workers asking {GPU: 1}); the autoscaler adds
   the GPU worker nodes on demand. The simulated GPU nodes have no CUDA: actors and workers compute on
   CPU and log ``GPU fallback: ...`` (counted in the Ray logs).
4. Samples the alive nodes every second, waits for the idle GPU nodes to be removed
   (``idle_timeout_minutes``), stops its cluster (SIGTERM to its own ``ray start --block``; only processes
   that belong to its temp dir are ever signalled) and writes ``report.json`` + ``report.md`` to ``--out``.

Exit status 0 only when every check passed (GPU nodes added for both stages, all pairs annotated with
valid confidences, align finished with a model, a fallback line from both stages, scale-down back to the
head alone).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FALLBACK = "GPU fallback:"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false",
                "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "DS_ACCELERATOR": "cpu",
                # every Ray worker (on every simulated node) imports this checkout
                "PYTHONPATH": os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)})
    return env


# ---------------------------------------------------------------------------------------------- step 1
def build_inputs(work: str, pairs: int) -> dict:
    """synthesize -> prepare -> train-annotator on a local Ray (then shut down)."""
    import ray

    from cwpo_ray.annotator.config import AnnotatorTrainConfig
    from cwpo_ray.annotator.train import run_train_annotator
    from cwpo_ray.config import RayConfig, build_config
    from cwpo_ray.prepare.config import PrepareConfig
    from cwpo_ray.prepare.stage import run_prepare
    from cwpo_ray.runtime import init_ray
    from cwpo_ray.synthetic.build import SyntheticConfig, build_synthetic
    from cwpo_ray.synthetic.pretrain import PretrainConfig
    from cwpo_ray.synthetic.task import SyntheticTaskConfig

    syn = build_synthetic(SyntheticConfig(output_dir=f"{work}/synthetic",
                                          task=SyntheticTaskConfig(num_pairs=pairs, seed=0, human_agreement=0.9),
                                          pretrain=PretrainConfig(num_texts=512, epochs=1)))
    paths = syn.paths.model_dump()
    init_ray(RayConfig(num_cpus=2, object_store_mb=256))
    prep = run_prepare(build_config(PrepareConfig, {
        "sources": [{"format": "canonical", "path": paths["data"], "name": "synthetic"}],
        "output_dir": f"{work}/prepared", "tokenizer": paths["tokenizer"], "max_length": 128}))
    ann = run_train_annotator(build_config(AnnotatorTrainConfig, {
        "model": paths["weak_base"], "data_dir": f"{work}/prepared", "output_dir": f"{work}/annotator",
        "max_steps": 6, "lr": 2e-3, "batch_size": 16, "max_length": 128, "num_workers": 1, "zero_stage": 0,
        "log_every_steps": 2, "max_train_pairs": 200}))
    ray.shutdown()
    return {"paths": paths, "prepared": f"{work}/prepared", "annotator": ann.model_dir,
            "unlabeled_rows": prep.model_dump().get("splits", {}).get("unlabeled")}


# ---------------------------------------------------------------------------------------------- step 2
class FakeCluster:
    """``RAY_FAKE_CLUSTER=1 ray start --head --block`` on a free port and a private temp dir."""

    def __init__(self, config: str, work: str):
        self.port = _free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="cwpo-fake-")  # short: Ray's socket paths must stay < 108 chars
        from ray._private.services import get_node_ip_address

        self.ip = get_node_ip_address()
        self.address = f"{self.ip}:{self.port}"
        cfg = yaml.safe_load(open(config))
        cfg["provider"]["gcs_address"] = self.address
        self.head_cpus = int(cfg["available_node_types"][cfg["head_node_type"]]["resources"].get("CPU", 1))
        self.config = cfg
        self.config_path = os.path.join(work, "fake_autoscaling.resolved.yaml")
        with open(self.config_path, "w") as f:
            yaml.safe_dump(cfg, f)
        self.log_path = os.path.join(work, "ray_start.log")
        self.proc = None

    def start(self, env: dict) -> None:
        ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
        cmd = [ray_bin, "start", "--head", "--block", f"--port={self.port}", f"--temp-dir={self.temp_dir}",
               f"--autoscaling-config={self.config_path}", f"--num-cpus={self.head_cpus}", "--num-gpus=0",
               "--include-dashboard=false", f"--dashboard-port={_free_port()}", "--disable-usage-stats", "--object-store-memory=268435456",
               f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
               "--min-worker-port=0", "--max-worker-port=0"]  # workers on random free ports, like the fake nodes
        env = {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        self.cmd = " ".join(cmd)
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited ({self.proc.returncode}); see {self.log_path}")
            if "This command will now block" in open(self.log_path).read():
                return
            time.sleep(0.5)
        raise RuntimeError(f"the fake cluster did not start in 90 s; see {self.log_path}")

    def _own_pids(self) -> list[int]:
        """Processes of this cluster: their command line or environment names its temp dir or GCS address."""
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    text = f.read()
                if self.temp_dir.encode() not in text:
                    with open(f"/proc/{d}/environ", "rb") as f:
                        text = f.read()
            except OSError:
                continue
            if self.temp_dir.encode() in text or re.search(rb"%s(?!\d)" % re.escape(self.address.encode()), text):
                pids.append(int(d))
        return pids

    def stop(self) -> dict:
        """SIGTERM to its `ray start --block` (which stops the head's processes), then SIGKILL to any
        process still naming this cluster's temp dir. Never `ray stop` (it stops every Ray on the host)."""
        left = []
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        time.sleep(2)
        for pid in self._own_pids():
            left.append(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return {"killed_leftover_pids": left}

    def logs_dir(self) -> str:
        return os.path.join(self.temp_dir, "session_latest", "logs")


# ---------------------------------------------------------------------------------------------- step 3
class NodeSampler(threading.Thread):
    """Alive nodes (and their type, from the declared resources) every ``every`` seconds."""

    def __init__(self, node_types: dict, every: float = 1.0):
        super().__init__(daemon=True)
        self.every, self.t0, self.samples, self.events = every, time.time(), [], []
        self.types = {k: v["resources"] for k, v in node_types.items()}
        self._halt = threading.Event()

    def node_type(self, resources: dict) -> str:
        """The declared type whose CPU, GPU and custom resources all equal the node's."""
        def key(res: dict) -> dict:
            return {k: v for k, v in res.items() if k in ("CPU", "GPU") or k.startswith("accelerator_type:")}

        have = key(resources)
        return next((name for name, res in self.types.items() if key(res) == have), "?")

    def now(self) -> float:
        return round(time.time() - self.t0, 1)

    def mark(self, what: str) -> float:
        t = self.now()
        self.events.append({"t": t, "event": what})
        print(f"[t={t:7.1f}s] {what}", flush=True)
        return t

    def run(self):
        import ray

        last = None
        while not self._halt.is_set():
            try:
                alive = [n for n in ray.nodes() if n["Alive"]]
            except Exception:  # the GCS is busy or going away: keep sampling
                time.sleep(self.every)
                continue
            by_type: dict[str, int] = {}
            for n in alive:
                t = self.node_type(n["Resources"])
                by_type[t] = by_type.get(t, 0) + 1
            s = {"t": self.now(), "nodes": len(alive), "by_type": dict(sorted(by_type.items())),
                 "node_ids": sorted(n["NodeID"] for n in alive)}
            self.samples.append(s)
            if last is None or s["by_type"] != last["by_type"]:
                print(f"[t={s['t']:7.1f}s] nodes: {s['nodes']} {s['by_type']}", flush=True)
            last = s
            time.sleep(self.every)

    def stop(self):
        self._halt.set()
        self.join(timeout=10)

    def first_time(self, pred, after: float) -> float | None:
        return next((s["t"] for s in self.samples if s["t"] >= after and pred(s)), None)


def gpu_nodes(sample: dict) -> int:
    return sum(v for k, v in sample["by_type"].items() if k.startswith("gpu"))


def wait_for_head_only(sampler: NodeSampler, timeout: float) -> float | None:
    """Sampler time at which only the head was alive again (None: not within ``timeout`` seconds)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        last = sampler.samples[-1] if sampler.samples else None
        if last and last["nodes"] == 1:
            sampler.mark("only the head is alive")
            return last["t"]
        time.sleep(1)
    return None


def run_stages(inputs: dict, work: str, cluster: FakeCluster, sampler: NodeSampler, down_wait: float) -> dict:
    from cwpo_ray.annotator.annotate import run_annotate
    from cwpo_ray.annotator.config import AnnotateConfig
    from cwpo_ray.config import build_config
    from cwpo_ray.student.align import run_align
    from cwpo_ray.student.config import AlignConfig

    ray_cfg = {"address": cluster.address}
    out: dict = {}
    t = sampler.mark("annotate starts (gpus_per_actor=1, actors 1..2)")
    ann = run_annotate(build_config(AnnotateConfig, {
        "model": inputs["annotator"], "data_dir": inputs["prepared"], "output_dir": f"{work}/annotated",
        "gpus_per_actor": 1, "cpus_per_actor": 1, "min_actors": 1, "max_actors": 2, "block_rows": 64,
        "max_length": 128, "overwrite": True, "ray": ray_cfg}))
    out["annotate"] = {"start": t, "end": sampler.mark(f"annotate done: {ann.pairs} pairs"), "pairs": ann.pairs,
                       "unique_pair_ids": ann.unique_pair_ids, "quarantined": ann.quarantined, "blocks": ann.blocks,
                       "seconds": ann.seconds, "pairs_per_s": ann.pairs_per_s,
                       "confidence_mean": ann.confidence_mean, "human_agreement": ann.human_agreement,
                       "output": ann.output}
    # let the GPU nodes go first, so align's scale-up starts from the head alone again
    down = wait_for_head_only(sampler, down_wait)
    out["annotate"]["head_only_at"] = down
    out["annotate"]["time_to_scale_down_s"] = round(down - out["annotate"]["end"], 1) if down is not None else None
    t = sampler.mark("align starts (use_gpu=True, 2 workers)")
    al = run_align(build_config(AlignConfig, {
        "model": inputs["paths"]["student_base"], "data_dir": f"{work}/annotated/preferences",
        "output_dir": f"{work}/align", "use_gpu": True, "num_workers": 2, "cpus_per_worker": 1,
        "zero_stage": 2, "max_steps": 4, "lr": 3e-4, "grad_accum": 1, "warmup_steps": 0, "batch_size": 8,
        "max_length": 64, "max_prompt_length": 40, "log_every_steps": 1, "ray": ray_cfg}))
    out["align"] = {"start": t, "end": sampler.mark(f"align done: {al.steps} steps"), "steps": al.steps,
                    "rows_used": al.rows_used, "first_loss": al.first_loss, "last_loss": al.last_loss,
                    "fit_seconds": al.fit_seconds, "model_dir": al.model_dir, "num_workers": al.num_workers}
    down = wait_for_head_only(sampler, down_wait)
    out["align"]["head_only_at"] = down
    out["align"]["time_to_scale_down_s"] = round(down - out["align"]["end"], 1) if down is not None else None
    return out


def fallback_lines(logs_dir: str) -> list[str]:
    """``GPU fallback`` lines of the workers' logs, each with the actor that wrote it (Ray's ``:actor_name:``)."""
    lines = []
    for f in sorted(glob.glob(os.path.join(logs_dir, "worker-*"))):
        if not (f.endswith(".err") or f.endswith(".out")):
            continue
        with open(f, errors="replace") as fh:
            hits = [x.strip() for x in fh if FALLBACK in x]
        if not hits:
            continue
        actor = "?"
        for g in (f[:-4] + ".out", f[:-4] + ".err"):
            if os.path.exists(g):
                names = [x.strip()[len(":actor_name:"):] for x in open(g, errors="replace") if x.startswith(":actor_name:")]
                actor = names[-1] if names else actor
                if names:
                    break
        lines += [f"{actor}: {x}" for x in hits]
    return lines


# ---------------------------------------------------------------------------------------------- report
def summarize(sampler: NodeSampler, stages: dict, idle_timeout_s: float) -> dict:
    s = sampler.samples
    ids_by_type: dict[str, set] = {}
    for x in s:
        for nid in x["node_ids"]:
            ids_by_type.setdefault("any", set()).add(nid)
    head_ids = set(s[0]["node_ids"]) if s else set()
    added = sorted(ids_by_type.get("any", set()) - head_ids)
    res = {"nodes_added": len(added), "max_nodes": max((x["nodes"] for x in s), default=0),
           "max_by_type": {}, "idle_timeout_s": idle_timeout_s}
    for x in s:
        for k, v in x["by_type"].items():
            res["max_by_type"][k] = max(res["max_by_type"].get(k, 0), v)
    for stage in ("annotate", "align"):
        st = stages.get(stage)
        if not st:
            continue
        first = sampler.first_time(lambda x: gpu_nodes(x) > 0, st["start"])
        st["first_gpu_node_at"] = first
        st["time_to_scale_up_s"] = round(first - st["start"], 1) if first is not None else None
        st["gpu_nodes_during"] = max((gpu_nodes(x) for x in s if st["start"] <= x["t"] <= st["end"]), default=0)
    return res


def write_report(out: str, report: dict) -> None:
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    r, s = report["result"], report["stages"]
    a, al = s.get("annotate", {}), s.get("align", {})
    md = [f"# Fake-autoscaling run ({report['date']})", "",
          f"Command: `{report['command']}`  ",
          f"Cluster: `{report['cluster_config']}` (fake_multinode; idle timeout {r['idle_timeout_s']:.0f} s); "
          f"`{report['ray_start']}`", "",
          "| measure | value |", "|---|---|",
          f"| nodes added (distinct simulated worker nodes) | {r['nodes_added']} (peak by type: {r['max_by_type']}) |",
          f"| annotate: time to scale up (start -> first GPU node alive) | {a.get('time_to_scale_up_s')} s |",
          f"| annotate: pairs annotated | {a.get('pairs')} ({a.get('unique_pair_ids')} unique ids, "
          f"{a.get('quarantined')} quarantined, {a.get('seconds')} s) |",
          f"| align: time to scale up | {al.get('time_to_scale_up_s')} s |",
          f"| align: result | {al.get('steps')} steps on {al.get('num_workers')} workers, loss "
          f"{al.get('first_loss')} -> {al.get('last_loss')} |",
          f"| time to scale down (stage done -> only the head alive): annotate, align | "
          f"{a.get('time_to_scale_down_s')} s, {al.get('time_to_scale_down_s')} s |",
          f"| GPU-fallback lines in the Ray logs | {len(report['fallback_lines'])} |",
          f"| wall time (cluster up -> down) | {report['cluster_seconds']} s; total {report['total_seconds']} s |",
          f"| checks | {'all passed' if report['ok'] else 'FAILED: ' + ', '.join(report['failed'])} |", "",
          "Node count over time (changes only):", "", "| t (s) | nodes | by type | event |", "|---|---|---|---|"]
    prev = None
    for x in report["timeline"]:
        ev = [e["event"] for e in report["events"] if prev is not None and prev["t"] < e["t"] <= x["t"]]
        if prev is None or x["by_type"] != prev["by_type"] or ev:
            md.append(f"| {x['t']} | {x['nodes']} | {x['by_type']} | {'; '.join(ev)} |")
        prev = x
    md += ["", "Fallback lines (first 4):", "", *[f"    {x}" for x in report["fallback_lines"][:4]], ""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (report.json, report.md, the run's files)")
    p.add_argument("--config", default=os.path.join(REPO, "cluster", "fake_autoscaling.yaml"))
    p.add_argument("--pairs", type=int, default=600, help="synthetic pairs (about half end up unlabeled)")
    p.add_argument("--scale-down-wait", type=float, default=180, help="seconds to wait for scale-down")
    args = p.parse_args(argv)
    t_all = time.time()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    work = os.path.join(out, "run")
    env = _env()
    os.environ.update(env)
    sys.path.insert(0, REPO)
    os.environ["CWPO_RAY_TMP"] = tempfile.mkdtemp(prefix="cwpo-local-")  # the local Ray of step 1, not shared

    print("[1/4] synthesize, prepare, train-annotator (local Ray)", flush=True)
    inputs = build_inputs(work, args.pairs)
    shutil.rmtree(os.environ["CWPO_RAY_TMP"], ignore_errors=True)

    import ray

    cluster = FakeCluster(args.config, work)
    idle_s = float(cluster.config["idle_timeout_minutes"]) * 60
    report: dict = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
                    "cluster_config": os.path.relpath(args.config, REPO), "date": time.strftime("%Y-%m-%d %H:%M"),
                    "stages": {}, "failed": []}
    sampler = None
    t_cluster = time.time()
    try:
        print(f"[2/4] fake cluster at {cluster.address} (temp dir {cluster.temp_dir})", flush=True)
        cluster.start(env)
        report["ray_start"] = "RAY_FAKE_CLUSTER=1 " + cluster.cmd.replace(sys.exec_prefix + "/bin/", "")
        from cwpo_ray.config import RayConfig
        from cwpo_ray.runtime import init_ray

        init_ray(RayConfig(address=cluster.address))
        sampler = NodeSampler(cluster.config["available_node_types"])
        sampler.start()
        time.sleep(2)
        print("[3/4] annotate + align on the fake cluster", flush=True)
        try:
            report["stages"] = run_stages(inputs, work, cluster, sampler, args.scale_down_wait)
        except Exception as e:  # keep the timeline and stop the cluster; reported as a failure
            report["failed"].append(f"stage error: {type(e).__name__}: {e}")
        print("[4/4] stopping the fake cluster", flush=True)
        sampler.stop()
        report["fallback_lines"] = fallback_lines(cluster.logs_dir())
        logs_copy = os.path.join(out, "ray_logs")
        shutil.rmtree(logs_copy, ignore_errors=True)
        shutil.copytree(cluster.logs_dir(), logs_copy, ignore=shutil.ignore_patterns("*.sock", "events", "*.so"),
                        ignore_dangling_symlinks=True, symlinks=False, dirs_exist_ok=True)
        ray.shutdown()
    finally:
        try:
            if sampler is not None and sampler.is_alive():
                sampler.stop()
            if ray.is_initialized():
                ray.shutdown()
        finally:
            report["stop"] = cluster.stop()
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    report["cluster_seconds"] = round(time.time() - t_cluster, 1)
    report["total_seconds"] = round(time.time() - t_all, 1)
    report["timeline"] = sampler.samples if sampler else []
    report["events"] = sampler.events if sampler else []
    report.setdefault("fallback_lines", [])
    report["result"] = summarize(sampler, report["stages"], idle_s) if sampler else {}
    st = report["stages"]
    checks = {
        "annotate added a GPU node": st.get("annotate", {}).get("gpu_nodes_during", 0) > 0,
        "align added a GPU node": st.get("align", {}).get("gpu_nodes_during", 0) > 0,
        "every unlabeled pair annotated once": bool(st.get("annotate")) and st["annotate"]["pairs"] > 0
        and st["annotate"]["pairs"] == st["annotate"]["unique_pair_ids"] and st["annotate"]["quarantined"] == 0,
        "align finished with a model": bool(st.get("align")) and st["align"]["steps"] > 0
        and os.path.exists(os.path.join(st["align"]["model_dir"], "config.json")),
        "fallback said by annotate and align": any("ScorerActor" in x for x in report["fallback_lines"])
        and any("RayTrainWorker" in x for x in report["fallback_lines"]),
        "scaled down to the head after each stage": all(st.get(k, {}).get("time_to_scale_down_s") is not None
                                                         for k in ("annotate", "align")),
    }
    report["checks"] = checks
    report["failed"] += [k for k, v in checks.items() if not v]
    report["ok"] = not report["failed"]
    write_report(out, report)
    print(open(os.path.join(out, "report.md")).read())
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
