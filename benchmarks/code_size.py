"""Code size of ``boltzkit/`` for the same features (issue #22's line budget).

Issue #22 asked for "fewer lines than today's 20.3k for the same features". Since it was filed
(commit ``FILING``) other issues added features (free-energy differences and profiles, the scale
probe, island SMC, SMC-corrected NAAS/PDNS, SCLD training, sc_latent, the torch force field...),
so the raw count of ``boltzkit/`` mixes two things. This script separates them with ``git blame``
(``-w -M -C -C``: whitespace ignored, lines followed through moves and copies across files):

* ``old``      -- lines written before the issue was filed (the refactoring's edits of them
  are traced back to the line they replaced: ``git blame --ignore-revs-file`` with the
  refactoring's commits, listed by hash in ``REFACTOR`` below);
* ``refactor`` -- lines the refactoring (issue #22: kernel layer, MCMC driver, shared checks and
  components, bio slices, file splits...) added with no earlier counterpart;
* ``speed``    -- lines last changed by the speed work of issue #23 (``SPEED``), which added no
  feature; reported apart and counted with the same features in the conservative total;
* ``features`` -- every other line written after the filing: the new features and fixes that
  other issues asked for.

"Same features" = old + refactor (+ speed, conservatively). git's matching of an ignored
commit's lines to the lines they replaced is a heuristic, and a line of an old feature that a
later feature commit edited counts as a feature line, so the split is approximate;
``features_by_commit`` lists the largest contributors for review.

Run:  python benchmarks/code_size.py   -> benchmarks/results/code_size.json  (about a minute)
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FILING = "b06512b"  # main when issue #22 was filed: boltzkit/ had 20,290 lines

# Commits of the refactoring (issue #22). Prefixes of hashes on main.
REFACTOR = """
d444709 cf31db1 49225d1 82a5ebc be7248b 2abc743 e1a377c 9176d0e 57da352 41ae87c dfa97bf a2c3221
891c1d8 e8d529d d47883c c15bca4 df223d8 c37d4c6 8711695 884c17e 331d404 fb504d2 722b834 2b645b9
c29cc10 cb5a4af 67e8872 c012f05 a31a16c b6537e9 d6df07f a27d413 8693ef2 2265ce3 9a03b7d 3d7c56b
776e3d7 5ceb043 6c8dac0
""".split() + """
1ef1b4b ba1e8e8 6c468cf fb6d596 5dfc433 ce7f8f5 60857ee 0384e1c bd2528e 760eb23 18e306d dad16dd
c338aa7 7b6e8a3 f721625 f330cf7 73cde2c 36763c5 555e99f 9396768 4704558 9796827 4f64780 c6759d3
8029bb6 c9d3cb2 80acd1f 18f0ce9 3ef655e 30352e5 2efc89b e610622 97eebe1 7224537 9315897 1bf3f0e
4b27138 f00e0e3 89e7dee d0987b6 8df5dbb f798f2a 13d605c 0cd0181 0fdbc2e 4e7ed2f 33cf374 011d76e
eacee33 e81b77f fe408e4 8d9ecac 0c21f54 4a28e3c b2c621c ecb688c c1a96a3 b931d31 5f714b1 0315f20
7eb0ab0 f775bf7 79ea1ad 74b50c6 68ad7c5 fe3b6ea 0fda043 4368648 24cecb2 20e4d3a a3d800b a3a52a4
6ac1c36 e962690 05db01b 3f16ea2 4266723 151c305
""".split() + """
e192ad4 afd0533 754e1ed 776133f 87f82dd 9b1bc7a a909e4c 6ea4f3f 69f272e bb42b38 dfad4e9 cb48c65 bbf0de3
fff4562 2d18eb4 c2236a8 7f36a9e ef9c0e7 545b0d9 bea7579 56ad6ce fdbe0da 242568c db3896c 37157d1
e80b52f eb003dc cf80da8 f592c57 896b47c b783bc7 694b1d9 04a2768 0ee6ae0 dbd8ee2 78ca87c 812ff14
91d2a3a e60b122 4bbcfd4 40ee121 418251e 38d09a5 8688a0f 1aa4e8e b6c3a29 bc89ce6 5b057df 229f649
9094c34 08a3e6b e084ed1 ba8fa41 82e5cf3 15daf20 d30c4b0 93cf6ee 1a487f3 bca8962 52c8496 9b81def
4ade153 a44464d 534a3b7 39de5e2 5dd90b6 bc63625 8f061d6 5a837d6 b5bc792 ef397a9
""".split()  # sessions 9-10: the sequence slice, clean-up passes, validators, edge-case fixes
# Commits of the speed work (issue #23): same features, faster.
SPEED = "a972a5a f7fd2ff e94414c 3382484 6865697 c16bc83 0da7156 c0e827f 37a19a8".split()


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def count_tree(rev: str) -> int:
    """Lines of the Python files under boltzkit/ at commit ``rev``."""
    files = [f for f in git("ls-tree", "-r", "--name-only", rev, "boltzkit").split() if f.endswith(".py")]
    return sum(len(git("show", f"{rev}:{f}").splitlines()) for f in files)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--extra-refactor", default="", help="more refactor commit hashes, comma-separated")
    p.add_argument("--out", default=str(RESULTS / "code_size.json"))
    args = p.parse_args()
    refactor = REFACTOR + [h for h in args.extra_refactor.split(",") if h]

    old = set(git("rev-list", FILING).split())
    files = [f for f in git("ls-files", "boltzkit").split() if f.endswith(".py")]
    # The refactoring's edits of older lines go back to the lines they replaced (git blame
    # --ignore-revs-file); only the lines it added without a counterpart stay its own.
    ignore = pathlib.Path(tempfile.mkstemp(suffix=".revs")[1])
    ignore.write_text("\n".join(git("rev-parse", h).strip() for h in refactor) + "\n")
    per_commit: collections.Counter = collections.Counter()
    for f in files:
        for line in git("blame", "--line-porcelain", "-w", "-M", "-C", "-C", "--ignore-revs-file",
                        str(ignore), "HEAD", "--", f).splitlines():
            head = line.split(" ", 1)[0]
            if len(head) == 40 and all(c in "0123456789abcdef" for c in head) and line.count(" ") >= 2:
                per_commit[head] += 1

    def kind(c: str) -> str:
        if c in old:
            return "old"
        if any(c.startswith(h) for h in refactor):
            return "refactor"
        if any(c.startswith(h) for h in SPEED):
            return "speed"
        return "features"

    split = collections.Counter()
    for c, n in per_commit.items():
        split[kind(c)] += n
    feats = sorted(((n, c) for c, n in per_commit.items() if kind(c) == "features"), reverse=True)
    out = {
        "filing_commit": FILING,
        "head": git("rev-parse", "--short", "HEAD").strip(),
        "lines_at_filing": count_tree(FILING),
        "lines_now": sum(per_commit.values()),
        "split": dict(split),
        "same_features": split["old"] + split["refactor"],
        "same_features_with_speed": split["old"] + split["refactor"] + split["speed"],
        "features_by_commit": [
            {"commit": c[:7], "lines": n, "subject": git("log", "-1", "--format=%s", c).strip()[:100]}
            for n, c in feats[:40]],
    }
    ignore.unlink()
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "features_by_commit"}, indent=1))


if __name__ == "__main__":
    main()
