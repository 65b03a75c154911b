"""Our OpenSoraT2V side by side with the reference implementation (Open-Sora Plan v1.2.0), on CPU.

Two jobs, both importing the reference from a checkout given on the command line (never copied here):

    mkdir -p /work/ref && git -C <Open-Sora-Plan mirror> archive v1.2.0 | tar -x -C /work/ref
    python bench/dit_reference.py --reference /work/ref speed                 # all cases, ~15 min
    python bench/dit_reference.py --reference /work/ref speed --cases fwd2400
    python bench/dit_reference.py --reference /work/ref fixture tests/dit/fixtures/reference

`speed`: a 2-layer slice of the v1.2 model at full width (hidden 2304, mT5-XXL text width 4096), fp32,
`--threads` threads, both models holding the reference's random init (fixed seed) and seeing the same
inputs (two samples with 64 text tokens each, 16 of them padding in the second; sizes in CASES). Each
(implementation, case) runs in a fresh subprocess so its peak RSS is its own; both run back to back per
case. Reported: wall seconds (the short cases after a warm-up, best of REPEATS calls); peak RSS of the
timed calls (VmHWM reset before them; libraries, weights and inputs included); the memory the calls
added less the parameter gradients (`activations_gib`, where the implementations differ: ~0.9 GiB of
libraries, 0.83 GiB of weights and 0.83 GiB of gradients are the same for both); the ratios ours /
reference; the max difference of the outputs (and of the input gradients for backward cases); and the
fraction of this machine's fp32 matmul throughput each run reaches: model FLOPs (no recomputation
counted) / seconds / the GFLOP/s of a 4096^3 `torch.mm` measured in the same subprocess.

The reference runs unmodified with `attention_mode: math`: its v1.2 configs say "xformers", which
restricts SDPA to the CUDA memory-efficient kernel and finds no kernel on a CPU.

`fixture`: writes a tiny official-format checkpoint made by the reference code (config.json +
diffusion_pytorch_model.safetensors) and the reference's outputs on fixed inputs (text padding, a
latent padding mask, a single frame, 720p and 480p interpolation scales), for tests/dit/test_parity.py.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import resource
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vae_reference import STUBBED, _peak_rss_gib, _reset_peak_rss, install_reference_stubs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_MODULE = "opensora.models.diffusion.opensora.modeling_opensora"
IMPLEMENTATIONS = ("ours", "reference")
SEED_WEIGHTS, SEED_INPUTS = 0, 1
TEXT_TOKENS = 64
# name: (latent frames, latent height, latent width, backward?, gradient checkpointing?, our finer
# recomputation settings: the reference has none)
FINE = {"sublayer_checkpointing": True, "mlp_checkpoint_tokens": 600}
# Cases short enough to time after a warm-up call, best of this many calls; the others run once, cold, on both.
REPEATS = {"fwdbwd192": 3, "fwd2400": 2}
CASES = {
    "fwdbwd192": (1, 24, 32, True, False, {}),  # 1 x 12 x 16 = 192 tokens (an image at 192x256 px)
    "fwd2400": (8, 30, 40, False, False, {}),  # 8 x 15 x 20 = 2,400 tokens (29x240x320 px)
    "fwd9600": (8, 60, 80, False, False, {}),  # 8 x 30 x 40 = 9,600 tokens (29x480x640 px)
    "fwdbwd2400ckpt": (8, 30, 40, True, True, {}),  # training at 2,400 tokens, per-block checkpointing on both
    "fwdbwd2400fine": (8, 30, 40, True, True, FINE),  # the same, ours also recomputing sublayers and MLP chunks
}


def import_reference(reference: Path) -> type:
    """The reference's `OpenSoraT2V`, imported from the checkout at `reference`."""
    module_file = reference / (REFERENCE_MODULE.replace(".", "/") + ".py")
    if not module_file.is_file():
        raise ValueError(f"--reference {reference}: no {module_file.relative_to(reference)} "
                         "(expected an Open-Sora Plan v1.2.0 checkout)")
    warnings.filterwarnings("ignore")
    install_reference_stubs()
    # diffusers 0.28 moved Transformer2DModelOutput; the reference imports it from its old module only to
    # wrap its return value.
    if "diffusers.models.transformer_2d" not in sys.modules:
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        shim = types.ModuleType("diffusers.models.transformer_2d")
        shim.Transformer2DModelOutput = Transformer2DModelOutput
        sys.modules["diffusers.models.transformer_2d"] = shim
        STUBBED.append("diffusers.models.transformer_2d")
    sys.path.insert(0, str(reference))
    module = importlib.import_module(REFERENCE_MODULE)
    if Path(module.__file__).resolve() != module_file.resolve():
        raise ValueError(f"--reference {reference}: `opensora` was imported from {module.__file__} instead")
    return module.OpenSoraT2V


def reference_config(config) -> dict:
    from components.dit.official import config_to_official

    return {**config_to_official(config), "attention_mode": "math"}


def slice_config(layers: int = 2):
    from components.dit.config import load_dit_config

    return load_dit_config("v1.2", [f"model.num_layers={layers}"]).model


def _current_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20  # kB
    raise AssertionError("/proc/self/status has no VmRSS line")


def make_inputs(frames: int, height: int, width: int, text_channels: int, seed: int = SEED_INPUTS) -> dict:
    """Two samples; the second has a quarter of its text tokens padded."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(2, TEXT_TOKENS, dtype=torch.long)
    text_mask[1, 3 * TEXT_TOKENS // 4:] = 0
    return {"latents": torch.randn(2, 4, frames, height, width, generator=generator),
            "timestep": torch.tensor([17, 803]),
            "text": torch.randn(2, TEXT_TOKENS, text_channels, generator=generator),
            "text_mask": text_mask}


def model_flops(config, tokens: int, text_tokens: int, backward: bool, batch: int = 2) -> float:
    """Matmul FLOPs of one pass over `batch` samples (x3 with backward); elementwise work and recomputation
    not counted."""
    d, n, length = config.hidden_size, tokens, text_tokens
    per_block = (2 * n * d * d * 4  # self-attention q, k, v, out
                 + 2 * 2 * n * n * d  # QK^T and AV
                 + 2 * n * d * d * 2 + 2 * length * d * d * 2  # cross-attention q, out; k, v on text
                 + 2 * 2 * n * length * d  # cross-attention scores and values
                 + 2 * n * d * 4 * d * 2)  # MLP
    outer = 2 * length * (config.caption_channels * d + d * d) + 2 * n * d * (4 * 4 + config.patch_channels)
    forward = config.num_layers * per_block + outer
    return batch * forward * (3 if backward else 1)


def matmul_gflops(seconds_budget: float = 3.0) -> float:
    """This process's fp32 matmul throughput: a 4096^3 `torch.mm`, best of repeated runs."""
    import torch

    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    torch.mm(a, b)  # warm-up
    best, spent = float("inf"), 0.0
    while spent < seconds_budget:
        start = time.perf_counter()
        torch.mm(a, b)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return 2 * 4096**3 / best / 1e9


def prepare(reference: Path, workdir: Path) -> None:
    """The reference model's random init (2-layer v1.2 slice) as an official folder in `workdir`."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    config = slice_config()
    torch.manual_seed(SEED_WEIGHTS)
    model = import_reference(reference).from_config(reference_config(config))
    save_file({key: value.contiguous() for key, value in model.state_dict().items()},
              workdir / "diffusion_pytorch_model.safetensors")
    (workdir / "config.json").write_text(json.dumps(reference_config(config), indent=2))


def run_case(implementation: str, case: str, reference: Path, workdir: Path, threads: int) -> dict:
    """Time one case of one implementation in this process (called in a fresh subprocess by `speed`)."""
    import torch
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(ROOT))
    from components.dit.official import build_with_weights

    torch.set_num_threads(threads)
    frames, height, width, backward, checkpointing, fine = CASES[case]
    config = slice_config()
    # Copies, so the weights are resident before the call for both (load_file maps the file lazily).
    state = {key: value.clone() for key, value in load_file(workdir / "diffusion_pytorch_model.safetensors").items()}
    if implementation == "ours":
        settings = {"gradient_checkpointing": checkpointing, **fine}
        model = build_with_weights(config.model_copy(update=settings), state, "slice")
        call = lambda x: model(x["latents"], x["timestep"], x["text"], x["text_mask"])  # noqa: E731
    else:
        model = import_reference(reference).from_config(reference_config(config))
        model.load_state_dict(state, strict=True)
        model.gradient_checkpointing = checkpointing  # what the reference's --gradient_checkpointing sets
        call = lambda x: model(x["latents"], x["timestep"], x["text"][:, None], encoder_attention_mask=x["text_mask"][:, None],  # noqa: E731
                                return_dict=False)[0]
    del state
    model.train(backward)  # the reference checkpoints only in training mode; dropout is 0
    inputs = make_inputs(frames, height, width, config.caption_channels)
    inputs["latents"].requires_grad_(backward)

    def once() -> dict:
        model.zero_grad(set_to_none=True)
        inputs["latents"].grad = None
        if not backward:
            with torch.inference_mode():
                return {"output": call(inputs)}
        output = call(inputs)
        output.square().mean().backward()
        return {"output": output.detach(), "latents_grad": inputs["latents"].grad}

    repeats = REPEATS.get(case, 1)
    if repeats > 1:
        once()  # warm-up: first-call costs (thread pools, kernel selection, RoPE tables) out of the timing
    throughput = matmul_gflops()
    model.zero_grad(set_to_none=True)
    inputs["latents"].grad = None
    gc.collect()
    resident = _current_rss_gib()  # libraries, weights and inputs, before the call
    peak_known = _reset_peak_rss()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = once()
        times.append(time.perf_counter() - start)
    seconds = min(times)
    peak = _peak_rss_gib() if peak_known else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    save_file({key: value.contiguous() for key, value in outputs.items()}, workdir / f"{implementation}-{case}.safetensors")
    tokens = frames * (height // 2) * (width // 2)
    flops = model_flops(config, tokens, TEXT_TOKENS, backward, batch=inputs["latents"].shape[0])
    gradient_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30 if backward else 0.0
    return {"seconds": round(seconds, 2), "call_peak_rss_gib": round(peak, 2), "resident_gib": round(resident, 2),
            "call_added_gib": round(peak - resident, 2),
            "activations_gib": round(peak - resident - gradient_gib, 2), "tokens": tokens,
            "model_gflop": round(flops / 1e9, 1), "matmul_gflops": round(throughput, 1),
            "fraction_of_matmul": round(flops / seconds / 1e9 / throughput, 3)}


def compare(workdir: Path, case: str) -> dict:
    from safetensors.torch import load_file

    ours, theirs = (load_file(workdir / f"{impl}-{case}.safetensors") for impl in IMPLEMENTATIONS)
    return {f"max_abs_diff_{key}": float((ours[key].double() - theirs[key].double()).abs().max()) for key in ours}


def speed(args) -> dict:
    import torch

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dit-reference-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def subprocess_json(*extra: str) -> dict:
        command = [sys.executable, __file__, "--reference", str(args.reference), "--workdir", str(workdir),
                   "--threads", str(args.threads), "speed", *extra]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"{' '.join(extra)} failed:\n{completed.stderr[-4000:]}")
        return json.loads(completed.stdout.strip().splitlines()[-1])

    if not (workdir / "config.json").is_file():
        subprocess_json("--prepare")
    results: dict = {"threads": args.threads, "torch": torch.__version__, "text_tokens": TEXT_TOKENS}
    for case in args.cases:
        measured = {impl: subprocess_json("--implementation", impl, "--case", case) for impl in IMPLEMENTATIONS}
        ours, theirs = measured["ours"], measured["reference"]
        results[case] = {**measured, "time_ratio": round(ours["seconds"] / theirs["seconds"], 3),
                         "memory_ratio": round(ours["call_peak_rss_gib"] / theirs["call_peak_rss_gib"], 3),
                         "activation_memory_ratio": round(ours["activations_gib"] / theirs["activations_gib"], 3),
                         **compare(workdir, case)}
        print(json.dumps({case: results[case]}), file=sys.stderr, flush=True)
    return results


def write_fixture(reference: Path, out: Path) -> dict:
    """A tiny official-format folder made by the reference code, plus the reference's outputs."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    from components.dit.config import DiTModelConfig

    reference_class = import_reference(reference)
    # Latent 8x12 -> a 4x6 token grid: extents differ, so the reference's cache bug (§9.1) stays out.
    config = DiTModelConfig(num_layers=2, num_attention_heads=2, attention_head_dim=12, caption_channels=16,
                            interpolation_scale_t=1.0, interpolation_scale_h=1.5, interpolation_scale_w=2.0,
                            sample_size_t=3, sample_size=(8, 12))
    torch.manual_seed(SEED_WEIGHTS)
    model = reference_class.from_config(reference_config(config)).eval()
    out.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()},
              out / "diffusion_pytorch_model.safetensors")
    official = {**reference_config(config), "attention_mode": "xformers"}
    del official["_t2v"]
    # What a released config carries besides the architecture (§8.2), to prove it is accepted.
    official.update({"use_stable_fp32": True, "decay": 0.999, "inv_gamma": 1.0, "min_decay": 0.0,
                     "optimization_step": 400, "power": 0.6667, "update_after_step": 0, "use_ema_warmup": False,
                     "_diffusers_version": "0.28.0"})
    (out / "config.json").write_text(json.dumps(official, indent=2, sort_keys=True))
    # 480p scales: the same weights under a config with interpolation (1, 1, 1).
    model_480p = reference_class.from_config(reference_config(config.model_copy(update={
        "interpolation_scale_h": 1.0, "interpolation_scale_w": 1.0}))).eval()
    model_480p.load_state_dict(model.state_dict())
    tensors = {}
    generator = torch.Generator().manual_seed(SEED_INPUTS)
    cases = {"video": (3, False, model), "image": (1, False, model), "video_latent_mask": (3, True, model),
             "image_latent_mask": (1, True, model), "video_480p": (3, False, model_480p)}
    for name, (frames, latent_padding, net) in cases.items():
        latents = torch.randn(2, 4, frames, 8, 12, generator=generator)
        text = torch.randn(2, 1, 6, 16, generator=generator)
        text_mask = torch.ones(2, 1, 6, dtype=torch.long)
        text_mask[0, 0, 3:] = 0  # padded caption in the first sample
        latent_mask = torch.ones(2, frames, 8, 12, dtype=torch.long)
        if latent_padding:
            latent_mask[1, :, 5:, :] = 0  # the last rows of the second sample are padding (one token row split)
        timestep = torch.tensor([3, 999])
        with torch.no_grad():
            output = net(latents, timestep, text, attention_mask=latent_mask, encoder_attention_mask=text_mask,
                         return_dict=False)[0]
        tensors.update({f"{name}.latents": latents, f"{name}.text": text, f"{name}.text_mask": text_mask,
                        f"{name}.latent_mask": latent_mask, f"{name}.timestep": timestep, f"{name}.output": output})
    save_file(tensors, out.parent / f"{out.name}_outputs.safetensors")
    return {"folder": str(out), "cases": list(cases), "reference_stubs": STUBBED}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True, help="Open-Sora Plan v1.2.0 checkout")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep weights and outputs here")
    jobs = parser.add_subparsers(dest="job", required=True)
    speed_parser = jobs.add_parser("speed")
    speed_parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    speed_parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    speed_parser.add_argument("--implementation", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    speed_parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    fixture_parser = jobs.add_parser("fixture")
    fixture_parser.add_argument("out", type=Path, help="folder to write the official-format checkpoint to")
    args = parser.parse_args()
    args.reference = args.reference.resolve()
    if args.job == "fixture":
        result = write_fixture(args.reference, args.out)
    elif args.prepare:
        prepare(args.reference, args.workdir)
        result = {"reference_stubs": STUBBED}
    elif args.case:
        result = run_case(args.implementation, args.case, args.reference, args.workdir, args.threads)
    else:
        result = speed(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
