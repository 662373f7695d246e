"""
dev/seed_table.py: the README's results table on the embedded example, over several seeds.

For each seed S (each seed builds its own toy model, toy-v2-seed{S}), the user's own command lines:
    python bs_unlearn.py --method M --seed S --out_dir runs/seeds/S/M      M = ga, npo, bs_t, bs_s
    python eval.py runs/seeds/S/{ga,npo,bs_t,bs_s} --out_dir runs/seeds/S/eval
Then two markdown tables: eval.py's headline columns for its two references and the four methods, each cell
the mean ± the sample standard deviation over the seeds; and, per seed, which method has the lowest Leak,
the most negative dHigh and the highest Agg. The numbers also go to runs/seeds/table.json.

    python dev/seed_table.py                  # seeds 0, 1, 2: about 10 minutes on 2 CPU cores
    python dev/seed_table.py --tables_only    # the tables again, from the evaluations already there
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the project's modules live one folder up
import eval as ev  # noqa: E402

METHODS = ["ga", "npo", "bs_t", "bs_s"]
MODELS = ["base", "retain"] + METHODS  # eval.py's two references first
HEADERS = ["fROUGE", "fTR", "Leak", "dTgt", "dHigh", "FQ", "MU", "Mem", "Agg"]
COLUMNS = [c for c in ev.COLUMNS if c[1] in HEADERS]  # (summary key, header, format), in eval.py's order
BEST = [  # (criterion, summary key, which end wins)
    ("lowest Leak", "fact_leak", min), ("most negative dHigh", "d_high", min), ("highest Agg", "agg", max)]


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (the sd needs at least two)")
    p.add_argument("--out_root", default=os.path.join("runs", "seeds"),
                   help="runs go to <out_root>/<seed>/<method>, evaluations to <out_root>/<seed>/eval")
    p.add_argument("--tables_only", action="store_true", help="no runs: read the evaluations already there")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    return args


# -----------------------------------------------------------------------------------------------------
# The runs: subprocesses, so that each is exactly what the command line does


def run(cmd, log):
    """`python <cmd>` from the repository root, its output to `log`; a failure ends the script."""
    print(f"{time.strftime('%H:%M:%S')} python {' '.join(cmd)}", file=sys.stderr, flush=True)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable] + cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        sys.exit(f"error: `python {' '.join(cmd)}` failed (exit {rc}); its output is in {log}")


def run_seed(seed, root):
    """Unlearn with every method from this seed's toy model, then evaluate the four runs together."""
    runs = [os.path.join(root, str(seed), m) for m in METHODS]
    for method, out in zip(METHODS, runs):
        run(["bs_unlearn.py", "--method", method, "--seed", str(seed), "--out_dir", out, "--overwrite"],
            os.path.join(root, "logs", f"{seed}-{method}.log"))
    run(["eval.py"] + runs + ["--out_dir", os.path.join(root, str(seed), "eval")],
        os.path.join(root, "logs", f"{seed}-eval.log"))


def read_summaries(root, seed):
    """{model: summary} from one seed's summary.json (eval.py's printed table, as numbers)."""
    path = os.path.join(root, str(seed), "eval", "summary.json")
    if not os.path.isfile(path):
        sys.exit(f"error: {path} not found; run without --tables_only first")
    with open(path) as f:
        return json.load(f)["summaries"]


# -----------------------------------------------------------------------------------------------------
# The tables


def seed_table(per_seed):
    """per_seed: {seed: {model: summary}}. Returns stats {model: {header: {mean, sd, values}}} (sd: the
    sample standard deviation; None with fewer than two values) and best {seed: {criterion: [method,
    value]}}, the method that wins each of BEST in that seed."""
    stats = {}
    for model in [m for m in MODELS if any(m in s for s in per_seed.values())]:
        stats[model] = {}
        for key, header, _ in COLUMNS:
            values = [s[model][key] for s in per_seed.values() if s.get(model, {}).get(key) is not None]
            stats[model][header] = dict(mean=statistics.mean(values) if values else None,
                                        sd=statistics.stdev(values) if len(values) > 1 else None,
                                        values=values)
    best = {}
    for seed, summaries in per_seed.items():
        best[seed] = {}
        for label, key, pick in BEST:
            scores = {m: summaries[m][key] for m in METHODS if summaries.get(m, {}).get(key) is not None}
            if scores:
                winner = pick(scores, key=scores.get)
                best[seed][label] = [winner, scores[winner]]
    return dict(stats=stats, best=best)


def cell(stat, fmt):
    """'mean ± sd' in eval.py's format for the column ('-' without values; the mean alone with one)."""
    if stat["mean"] is None:
        return "-"
    mean = f"{ev.tidy(stat['mean'], fmt):{fmt}}"
    return mean if stat["sd"] is None else f"{mean} ± {ev.tidy(stat['sd'], fmt):{fmt.lstrip('+')}}"


def markdown(table, seeds):
    """The two tables as markdown, each under a line that says what its cells are."""
    head = "| model | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [f"Mean ± sample standard deviation over seeds {', '.join(map(str, seeds))}:", "", head,
             "|---|" + "---:|" * len(COLUMNS)]
    for model, row in table["stats"].items():
        lines.append(f"| {model} | " + " | ".join(cell(row[h], fmt) for _, h, fmt in COLUMNS) + " |")
    fmts = {key: fmt for key, _, fmt in COLUMNS}
    lines += ["", "The best of the four methods in each seed:", "",
              "| seed | " + " | ".join(label for label, _, _ in BEST) + " |", "|---:|" + "---|" * len(BEST)]
    for seed, won in table["best"].items():
        cells = [f"{won[label][0]} ({ev.tidy(won[label][1], fmts[key]):{fmts[key]}})" if label in won else "-"
                 for label, key, _ in BEST]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = get_args(argv)
    root = os.path.abspath(args.out_root)
    t0 = time.time()
    if not args.tables_only:
        for seed in args.seeds:
            run_seed(seed, root)
    per_seed = {seed: read_summaries(root, seed) for seed in args.seeds}
    table = seed_table(per_seed)
    with open(os.path.join(root, "table.json"), "w") as f:
        json.dump(dict(seeds=args.seeds, **table,
                       per_seed={s: {m: {h: v.get(k) for k, h, _ in COLUMNS} for m, v in summaries.items()}
                                 for s, summaries in per_seed.items()}), f, indent=1)
    print(markdown(table, args.seeds))
    print(f"\nwrote {os.path.join(root, 'table.json')}; took {time.time() - t0:.0f} s")
    return table


if __name__ == "__main__":
    main()
