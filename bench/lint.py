"""How long it takes to lint 200 campaign files and the templates they use.

Writes 200 generated, valid campaign files (mixed triggers and offers, a tenth of them
paused or draft), the segments and attributes files and 24 templates (12 of them with a
Romanian variant) on the project's ``templates/_base`` layout to a temporary directory,
then times:

* the full lint path, ``worker.decide.rules.load_rules(settings, Renderer(settings), [dir])``,
  which parses and validates every file and parses and renders every template of every
  variant: each run, best and median (target: < 2 s);
* the baseline: ``worker.decide.rule_files.load_rule_set`` alone, without template checks;
* the YAML round-trip parse alone (``triggers.yaml_source.read_yaml`` on every file);
* ``crosssell lint <dir>`` once as a subprocess, wall clock, interpreter start included.

Run ``python -m bench.lint`` (``--help`` for the knobs; ``--profile`` adds a cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.corpus import DEFAULT_SEED, Corpus, write_corpus
from bench.timing import machine_line, print_profile, verdict, workdir
from triggers.definitions import Definitions
from triggers.rule_set import RuleSet
from triggers.yaml_source import read_yaml
from worker.core.settings import Settings
from worker.decide.rule_files import campaign_files, load_definitions, load_rule_set
from worker.decide.rules import load_rules
from worker.email.rendering import Renderer

TARGET_SECONDS = 2.0
INACTIVE_SHARE = 0.1


def bench_settings(corpus: Corpus) -> Settings:
    return Settings(
        campaigns_dir=corpus.campaigns_dir,
        templates_dir=corpus.templates_dir,
        segments_file=corpus.segments_file,
        attributes_file=corpus.attributes_file,
        var_dir=corpus.var_dir,
    )


def full_lint(settings: Settings, campaigns_dir: Path) -> RuleSet:
    """Exactly what ``crosssell lint DIR`` runs in-process."""
    return load_rules(settings, Renderer(settings), [campaigns_dir], parallel=True)


def loader_only(definitions: Definitions, campaigns_dir: Path) -> RuleSet:
    return load_rule_set(
        [campaigns_dir], segments=definitions.segments, attributes=definitions.attributes
    )


def yaml_only(campaigns_dir: Path) -> int:
    parsed = 0
    for path in campaign_files([campaigns_dir]):
        document, issues = read_yaml(path.read_text(encoding="utf-8"), str(path), "a campaign")
        parsed += document is not None and not issues
    return parsed


def _timed(action: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def lint_command() -> list[str]:
    """The installed ``crosssell`` script next to this interpreter, else the module."""
    script = Path(sys.executable).parent / "crosssell"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from worker.commands.cli import main; main()"]


def run_subprocess(corpus: Corpus) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = dict(os.environ)
    env.update(
        CROSSSELL_CAMPAIGNS_DIR=str(corpus.campaigns_dir),
        CROSSSELL_TEMPLATES_DIR=str(corpus.templates_dir),
        CROSSSELL_SEGMENTS_FILE=str(corpus.segments_file),
        CROSSSELL_ATTRIBUTES_FILE=str(corpus.attributes_file),
        CROSSSELL_VAR_DIR=str(corpus.var_dir),
    )
    command = [*lint_command(), "lint", str(corpus.campaigns_dir)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    return time.perf_counter() - started, done


def interpreter_and_imports() -> float:
    """Wall time of a fresh interpreter that only imports the CLI module."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import worker.commands.cli"], check=True)
    return time.perf_counter() - started


def _runs(values: Sequence[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lint",
        description="Time linting 200 generated campaign files and their templates.",
    )
    parser.add_argument("--campaigns", type=int, default=200, help="campaign files (200)")
    parser.add_argument("--repeat", type=int, default=3, help="in-process runs per line (3)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=None, help="keep the generated files here")
    parser.add_argument("--no-subprocess", action="store_true", help="skip `crosssell lint`")
    parser.add_argument("--profile", action="store_true", help="cProfile one full lint run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with workdir(args.out, "lint") as root:
        corpus = write_corpus(root, args.seed, args.campaigns, INACTIVE_SHARE, templates=True)
        settings = bench_settings(corpus)
        definitions = load_definitions(corpus.attributes_file, corpus.segments_file)
        templates = sorted(p.name for p in corpus.templates_dir.iterdir() if p.name[0] != "_")
        variants = sum(len(c.templates) for c in corpus.campaigns)
        localised = sum(
            1
            for campaign in corpus.campaigns
            for name in campaign.templates
            if (corpus.templates_dir / name / "body.ro.html").exists()
        )
        inactive = sum("status: active" not in c.text for c in corpus.campaigns)
        size = sum(len(c.text.encode()) for c in corpus.campaigns)

        print("bench.lint: validate 200 campaign files and their templates")
        print(f"  {machine_line()}")
        print(
            f"  corpus: {len(corpus.campaigns)} campaign files ({inactive} paused/draft, "
            f"{size / len(corpus.campaigns):.0f} bytes and "
            f"{statistics.fmean(c.leaves for c in corpus.campaigns):.1f} condition leaves "
            f"on average), {len(templates)} templates ({variants} variants to check, "
            f"{localised} with a second locale), seed {args.seed}"
            + (f", kept in {root}" if args.out else "")
        )
        print(f"  method: {args.repeat} runs per line in one process, alternating, GC on")

        full: list[float] = []
        loader: list[float] = []
        parse: list[float] = []
        for _ in range(args.repeat):
            seconds, result = _timed(lambda: full_lint(settings, corpus.campaigns_dir))
            assert isinstance(result, RuleSet)
            if len(result.campaigns) != len(corpus.campaigns):  # correctness, not timing
                raise SystemExit(f"lint accepted {len(result.campaigns)} campaigns")
            full.append(seconds)
            seconds, _ = _timed(lambda: loader_only(definitions, corpus.campaigns_dir))
            loader.append(seconds)
            seconds, parsed = _timed(lambda: yaml_only(corpus.campaigns_dir))
            if parsed != len(corpus.campaigns):
                raise SystemExit(f"read_yaml parsed {parsed} files")
            parse.append(seconds)

        median = statistics.median(full)
        print()
        print(f"  {'seconds':<58} {'best':>6} {'median':>7}   runs")
        print(
            f"  {'full lint: load_rules(settings, Renderer(settings), [dir])':<58} "
            f"{min(full):>6.2f} {statistics.median(full):>7.2f}   {_runs(full)}   "
            f"target: < {TARGET_SECONDS:.0f} s -> {verdict(median, TARGET_SECONDS, False)}"
            " (median)"
        )
        print(
            f"  {'baseline: load_rule_set, no template checks':<58} "
            f"{min(loader):>6.2f} {statistics.median(loader):>7.2f}   {_runs(loader)}"
        )
        print(
            f"  {'  of which YAML round-trip parse (read_yaml per file)':<58} "
            f"{min(parse):>6.2f} {statistics.median(parse):>7.2f}   {_runs(parse)}"
        )
        checks = statistics.median(full) - statistics.median(loader)
        print(
            f"  template checks + definitions (full - baseline, medians): {checks:.2f} s, "
            f"{checks / max(variants, 1) * 1000:.1f} ms per variant"
        )
        per_file = statistics.median(loader) / len(corpus.campaigns) * 1000
        print(f"  loader per campaign file (median): {per_file:.1f} ms")

        if not args.no_subprocess:
            seconds, done = run_subprocess(corpus)
            last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
            print(
                f"  `crosssell lint <dir>` subprocess, wall clock, once: {seconds:.2f} s "
                f"(exit {done.returncode}: {last})"
            )
            if done.returncode != 0:
                print(done.stdout + done.stderr, file=sys.stderr)
                return 1
            start = interpreter_and_imports()
            bytecode = "off" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "on"
            print(
                f"    of which a fresh interpreter importing worker.commands.cli: {start:.2f} s "
                f"(PYTHONDONTWRITEBYTECODE {'set' if bytecode == 'off' else 'unset'})"
            )

        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            full_lint(settings, corpus.campaigns_dir)
            profiler.disable()
            print("\n  cProfile of one full lint run (profiling inflates times):")
            print_profile(profiler, limit=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
