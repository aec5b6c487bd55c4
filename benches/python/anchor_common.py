"""What the Python sides of the benchmarks (benches/python/*_anchor.py) share: the models that
scripts/setup.sh installed, the switch that keeps Hugging Face libraries offline, SmolLM2
loaded from its GGUF file as transformers loads it, the peak-RSS and version fields of their
JSON reports, and the command line of an anchor that either runs or tabulates.

scripts/gpu-bundle.sh copies this file into the GPU bundle beside dpo_step_anchor.py, which
imports it there with nothing else of the repository around: it imports only the standard
library at the top, and torch and transformers inside the functions that need them.
"""

import argparse
import os
import platform
import resource
import sys
from importlib.metadata import version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def models_env() -> dict:
    """The paths scripts/setup.sh wrote to .cache/models.env; FEDSYN_* variables set in the
    environment take precedence."""
    env_file = REPO_ROOT / ".cache" / "models.env"
    if not env_file.is_file():
        sys.exit(f"{env_file} is missing: run scripts/setup.sh first")
    pairs = (line.partition("=") for line in env_file.read_text().splitlines())
    values = {k.strip(): v.strip() for k, _, v in pairs if k and not k.startswith("#")}
    values.update({k: v for k, v in os.environ.items() if k.startswith("FEDSYN_") and v})
    return values


def offline() -> None:
    """Keeps transformers and the Hub client off the network: every model is in a local folder,
    nothing may be fetched. Call it before they are imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def load_gguf_model(gguf_path: Path, dtype: str = "f32"):
    """The causal language model of a GGUF file, loaded by transformers (``gguf_file=``) and
    dequantised to fp32 (``dtype="f32"``) or bf16 (``"bf16"``; PEFT keeps LoRA adapters on it
    in fp32, as fedsyn does)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    return AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch_dtype)


def peak_rss_mib() -> float:
    """The peak resident set of this interpreter so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss: KiB on Linux


def versions(*packages: str) -> dict:
    """The report's "versions": Python, torch, transformers, then each of `packages`."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        **{package: version(package) for package in packages},
    }


def run_or_tabulate(parser: argparse.ArgumentParser, run_input: argparse.Action, run,
                    markdown) -> None:
    """Completes the command line of an anchor with two modes and runs the one it asks for:
    `run(args)` when `run_input` (the option naming the run's input file) is given, or
    `markdown(paths)` on the result files after ``--markdown``, which both tools write."""
    parser.add_argument("--markdown", nargs="+", metavar="JSON",
                        help="result files of both tools: print the comparison table")
    args = parser.parse_args()
    if args.markdown:
        markdown(args.markdown)
    elif getattr(args, run_input.dest):
        run(args)
    else:
        parser.error(f"give {run_input.option_strings[0]} FILE (run) or --markdown JSON... "
                     "(table)")


def stack_text(report: dict) -> str:
    """The Python stack a report was measured with, for the note under a comparison table:
    "Python …, torch …, transformers …", with the attention implementation when the report
    records one."""
    v = report["versions"]
    text = f"Python {v['python']}, torch {v['torch']}, transformers {v['transformers']}"
    return text + (f" (attention: {report['attention']})" if "attention" in report else "")
