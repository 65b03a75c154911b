"""Our v1.2 CausalVAE side by side with the reference implementation (Open-Sora Plan v1.2.0), on CPU.

Both models hold the same weights (the reference's random init, fixed seed) and see the same inputs
(a fixed-seed video in [-1, 1] for encode, fixed-seed latents for decode); fp32, inference mode,
encode = posterior mean. The reference's weights are written as an official v1.2 folder (config.json +
checkpoint.safetensors) and our model loads it through `components.vae.official.load_official`, so the
run also checks that loader. Each (implementation, phase) runs in a fresh subprocess so its peak RSS is
its own. The reference is imported from a checkout given on the command line and never copied here:

    mkdir -p /work/ref && git -C <Open-Sora-Plan mirror> archive v1.2.0 | tar -x -C /work/ref
    python bench/vae_reference.py --reference /work/ref                 # 1x3x9x128x128
    python bench/vae_reference.py --reference /work/ref --size large    # 1x3x33x256x256 (reference decode ~6 min, ~11 GiB)
    python bench/vae_reference.py --reference /work/ref --size large --phases encode

Printed JSON, per phase: wall s, cpu s (all threads; steadier than wall s on a shared machine), peak RSS
of the whole process (`ru_maxrss`, with the loader's transient second copy of the ~0.96 GB of weights),
of loading alone, and of the timed call alone (VmHWM reset just before it; the resident weights
included), the ratios ours / reference, and the max abs and relative differences between the outputs.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.machinery
import importlib.util
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"small": (9, 128, 128), "medium": (17, 128, 128), "large": (33, 256, 256)}
IMPLEMENTATIONS = ("ours", "reference")
PHASES = ("encode", "decode")
REFERENCE_MODULE = "opensora.models.causalvideovae.model.causal_vae.modeling_causalvae"
OFFICIAL_FOLDER = "official"  # config.json + checkpoint.safetensors, the layout `load_official` reads
WEIGHTS_FILE = "checkpoint.safetensors"
INPUTS_FILE = "inputs.safetensors"
SEED_WEIGHTS, SEED_INPUTS = 0, 1

# Modules that the reference's VAE package imports at module level only for training, video reading and
# evaluation helpers (none of which encode/decode call), and that our environment does not install.
# Each stub defines just the names imported from it. Entries: (package whose absence calls for the stub,
# module to stub, names imported from it).
REFERENCE_STUBS = (
    ("pytorch_lightning", "pytorch_lightning", ()),  # model/modeling_videobase.py; the model never uses it
    ("deepspeed", "deepspeed", ()),  # utils/utils.py: a gradient-norm helper for training
    ("decord", "decord", ("VideoReader", "cpu")),  # utils/utils.py and modeling_causalvae.py: video reading
    ("pytorchvideo", "pytorchvideo", ()),
    ("pytorchvideo", "pytorchvideo.transforms", ("ShortSideScale",)),  # modeling_causalvae.py: eval transforms
    ("tensorboard", "torch.utils.tensorboard", ("SummaryWriter",)),  # utils/utils.py; torch's wrapper needs tensorboard
)


def _unavailable(name: str):
    def placeholder(*args, **kwargs):
        raise RuntimeError(f"{name} is a stub from bench/vae_reference.py: the VAE's encode/decode should not call it")
    return placeholder


STUBBED: list[str] = []  # what `install_reference_stubs` put in place in this process


def install_reference_stubs() -> None:
    """Put the stubs above into sys.modules, only where the real package is missing (recorded in STUBBED)."""
    import torchvision.io

    missing = {package for package, module_name, _ in REFERENCE_STUBS
               if module_name not in sys.modules and importlib.util.find_spec(package) is None}
    for package, module_name, names in REFERENCE_STUBS:
        if package not in missing:
            continue
        module = types.ModuleType(module_name)
        # A package spec, so `import pytorchvideo.transforms` finds the stub registered below it.
        module.__spec__ = importlib.machinery.ModuleSpec(module_name, None, is_package=True)
        module.__path__ = []
        for name in names:
            setattr(module, name, _unavailable(f"{module_name}.{name}"))
        sys.modules[module_name] = module
        STUBBED.append(module_name)
    # torchvision 0.29 dropped io.read_video, which modeling_causalvae.py imports for its eval helpers.
    if not hasattr(torchvision.io, "read_video"):
        torchvision.io.read_video = _unavailable("torchvision.io.read_video")
        STUBBED.append("torchvision.io.read_video")


def import_reference(reference: Path) -> type:
    """The reference's `CausalVAEModel` class, imported from the checkout at `reference`."""
    module_file = reference / (REFERENCE_MODULE.replace(".", "/") + ".py")
    if not module_file.is_file():
        raise ValueError(f"--reference {reference}: no {module_file.relative_to(reference)} "
                         "(expected an Open-Sora Plan v1.2.0 checkout)")
    install_reference_stubs()
    sys.path.insert(0, str(reference))
    module = importlib.import_module(REFERENCE_MODULE)
    if Path(module.__file__).resolve() != module_file.resolve():
        raise ValueError(f"--reference {reference}: `opensora` was imported from {module.__file__} instead")
    return module.CausalVAEModel


def prepare(reference: Path, size: str, workdir: Path) -> None:
    """Write the reference model's random init as an official v1.2 folder, and the fixed-seed inputs."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    from components.vae.config import load_vae_config
    from components.vae.official import config_to_official

    config = load_vae_config("v1.2").model
    official_config = config_to_official(config)  # the reference's own field names (reference notes §8.1)
    reference_class = import_reference(reference)
    torch.manual_seed(SEED_WEIGHTS)
    model = reference_class.from_config(official_config)  # how the reference builds from its config.json
    folder = workdir / OFFICIAL_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, folder / WEIGHTS_FILE)
    (folder / "config.json").write_text(json.dumps(official_config, indent=2))
    del model

    frames, height, width = SIZES[size]
    generator = torch.Generator().manual_seed(SEED_INPUTS)
    video = torch.rand(1, 3, frames, height, width, generator=generator) * 2 - 1  # (B, 3, T, H, W) in [-1, 1]
    latent_shape = (1, config.embed_dim, (frames - 1) // config.temporal_compression + 1,
                    height // config.spatial_compression, width // config.spatial_compression)
    latents = torch.randn(latent_shape, generator=generator)  # (B, 4, t, h, w)
    save_file({"video": video, "latents": latents}, workdir / INPUTS_FILE)


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) so the next reading covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB
    raise AssertionError("/proc/self/status has no VmHWM line")


def load_model(implementation: str, reference: Path, workdir: Path):
    import torch
    from safetensors.torch import load_file

    folder = workdir / OFFICIAL_FOLDER
    if implementation == "ours":
        sys.path.insert(0, str(ROOT))
        from components.vae.official import load_official

        return load_official(folder)
    model = import_reference(reference).from_config(json.loads((folder / "config.json").read_text()))
    model.load_state_dict(load_file(folder / WEIGHTS_FILE), strict=True)
    # The reference runs on CPU unchanged (no .cuda() or dtype casts on this path), so nothing is patched.
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    return model.eval()


def run_phase(implementation: str, phase: str, reference: Path, workdir: Path, threads: int) -> dict:
    """Time one phase of one implementation in this process (called in a fresh subprocess by `main`)."""
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(threads)
    model = load_model(implementation, reference, workdir)
    inputs = load_file(workdir / INPUTS_FILE)["video" if phase == "encode" else "latents"]
    gc.collect()
    # Resetting VmHWM also resets what ru_maxrss reports, so read the loading peak first.
    load_peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    call_peak_known = _reset_peak_rss()
    with torch.inference_mode():
        start, cpu_start = time.perf_counter(), time.process_time()
        output = model.encode(inputs).mean if phase == "encode" else model.decode(inputs)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    call_peak_gib = _peak_rss_gib() if call_peak_known else None
    process_peak_gib = max(load_peak_gib, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    save_file({"output": output.contiguous()}, workdir / f"{implementation}-{phase}.safetensors")
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
            "peak_rss_gib": round(process_peak_gib, 2), "load_peak_rss_gib": round(load_peak_gib, 2),
            "call_peak_rss_gib": None if call_peak_gib is None else round(call_peak_gib, 2),
            "output_shape": list(output.shape)}


def compare_outputs(workdir: Path, phase: str) -> dict:
    """Differences of our output from the reference's (max abs; relative to the reference's max |value| and L2)."""
    from safetensors.torch import load_file

    ours = load_file(workdir / f"ours-{phase}.safetensors")["output"].double()
    theirs = load_file(workdir / f"reference-{phase}.safetensors")["output"].double()
    if ours.shape != theirs.shape:
        raise AssertionError(f"{phase}: output shapes differ, ours {list(ours.shape)} vs reference {list(theirs.shape)}")
    difference = (ours - theirs).abs()
    return {"max_abs_diff": float(difference.max()),
            "max_rel_diff": float(difference.max() / theirs.abs().max()),
            "rel_l2_diff": float((ours - theirs).norm() / theirs.norm()),
            "reference_max_abs": float(theirs.abs().max()),
            "reference_mean_abs": float(theirs.abs().mean())}


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or not theirs else round(ours / theirs, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True, help="Open-Sora Plan v1.2.0 checkout (not a wheel)")
    parser.add_argument("--size", choices=list(SIZES), default="small",
                        help="small 9x128x128, medium 17x128x128 (a quick check of the large path), large 33x256x256")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep weights, inputs and outputs here (default: a temporary folder, removed at the end)")
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--implementation", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    reference = args.reference.resolve()
    if args.prepare:
        prepare(reference, args.size, args.workdir)
        print(json.dumps({"reference_stubs": STUBBED}))
        return 0
    if args.phase:
        print(json.dumps(run_phase(args.implementation, args.phase, reference, args.workdir, args.threads)))
        return 0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vae-reference-"))

    def subprocess_json(*extra: str) -> dict:
        # Every step in its own process: measurements stay separate and this process stays small.
        command = [sys.executable, __file__, "--reference", str(reference), "--workdir", str(workdir),
                   "--size", args.size, "--threads", str(args.threads), *extra]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"{' '.join(extra)} failed:\n{completed.stderr[-4000:]}")
        return json.loads(completed.stdout.strip().splitlines()[-1])

    try:
        prepared = subprocess_json("--prepare")
        import torch

        results: dict = {"size": args.size, "clip": [1, 3, *SIZES[args.size]], "threads": args.threads,
                         "torch": torch.__version__, **prepared}
        for phase in args.phases:
            # Both implementations back to back for each phase, so a change in machine load hits both alike.
            measured = {implementation: subprocess_json("--implementation", implementation, "--phase", phase)
                        for implementation in IMPLEMENTATIONS}
            ours, theirs = measured["ours"], measured["reference"]
            results[phase] = {
                **measured,
                "ours_over_reference": {key: _ratio(ours[key], theirs[key])
                                        for key in ("seconds", "cpu_seconds", "peak_rss_gib", "call_peak_rss_gib")},
                "difference": compare_outputs(workdir, phase),
            }
        print(json.dumps(results, indent=2))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
