"""The import graph of ``harness/``, read from the source (imports inside functions count), and its layers.

``python tests/layering.py`` prints the circles and upward imports; ``--png FILE`` draws the layers
and the arrows between packages (docs/layers.png is made this way). ``tests/test_layers.py`` holds
the graph to the rules: no module circle, no package circle, no import from a higher layer.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "harness"

# Lowest first. A module belongs to the longest prefix listed; a module may import its own layer or
# lower ones, never a higher one.
LAYERS: list[tuple[str, tuple[str, ...], str]] = [
    ("ground", ("harness", "harness.errors", "harness.atomic", "harness.registry", "harness.tomlfile",
                "harness.versions", "harness.device", "harness.config"),
     "errors, atomic IO, registry, TOML, versions, device, run configuration"),
    ("models", ("harness.models",), "hub id / folder / GGUF -> tokenizer, model, conversion cache"),
    ("data", ("harness.data", "harness.userdata"), "the study's datasets and user datasets"),
    ("engines", ("harness.diff", "harness.audit", "harness.inference"),
     "weight diff, label/EOS audit, generation and serving"),
    ("train", ("harness.train",), "plans, the fixture graph, its scheduler, the training methods"),
    ("evaluate", ("harness.evaluate",), "output statistics: BLEU, BERTScore, the LLM judge"),
    ("findings", ("harness.findings",), "claim specs, statistics, the session, report, baselines"),
    ("plugin", ("harness.pytest_plugin", "harness.xdist_plugin", "harness.__main__"),
     "the pytest plugin and the command line: glue only"),
]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    """Index into LAYERS of the longest listed prefix of ``module``; ValueError when none matches."""
    best, best_len = None, -1
    for i, (_, prefixes, _) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or (p != "harness" and module.startswith(p + "."))) and len(p) > best_len:
                best, best_len = i, len(p)
    if best is None:
        raise ValueError(f"{module} is in no layer of tests/layering.py")
    return best


def package_of(module: str) -> str:
    """``harness.train.graph`` -> ``harness.train``; top-level modules are their own package."""
    return ".".join(module.split(".")[:2])


@dataclass
class Graph:
    modules: dict[str, Path]
    edges: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    lines: dict[tuple[str, str], int] = field(default_factory=dict)  # (from, to) -> first line number

    def module_cycles(self) -> list[list[str]]:
        return _sccs(self.modules, self.edges)

    def package_edges(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for a, bs in self.edges.items():
            for b in bs:
                if package_of(a) != package_of(b):
                    out[package_of(a)].add(package_of(b))
        return out

    def package_cycles(self) -> list[list[str]]:
        pe = self.package_edges()
        return _sccs({package_of(m) for m in self.modules}, pe)

    def upward(self) -> list[str]:
        out = []
        for a, bs in sorted(self.edges.items()):
            for b in sorted(bs):
                la, lb = layer_of(a), layer_of(b)
                if lb > la:
                    out.append(f"{self.modules[a].relative_to(ROOT.parent)}:{self.lines[(a, b)]}: {a} "
                               f"({LAYERS[la][0]}) imports {b} ({LAYERS[lb][0]})")
        return out


def read_graph(root: Path = ROOT) -> Graph:
    modules = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    g = Graph(modules)
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(mod, node, is_pkg, modules):
                if target != mod and target.startswith("harness"):
                    g.edges[mod].add(target)
                    g.lines.setdefault((mod, target), node.lineno)
    return g


def _targets(mod: str, node: ast.AST, is_pkg: bool, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = mod.split(".") if is_pkg else mod.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            pkg = ".".join(base + ([node.module] if node.module else []))
        else:
            pkg = node.module or ""
        names = [f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in modules else pkg for a in node.names]
    else:
        names = [a.name for a in node.names]
    out = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def _sccs(nodes, edges) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def draw(graph: Graph, path: Path) -> None:
    """The layers as rows (lowest at the bottom), each package a box (the ground layer's modules one box),
    each package import an arrow (red if it pointed up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def box(module: str) -> str:
        return "ground" if layer_of(module) == 0 else package_of(module)

    boxes = sorted({box(m) for m in graph.modules})
    rows: dict[int, list[str]] = defaultdict(list)
    for b in boxes:
        rows[0 if b == "ground" else layer_of(b)].append(b)
    pos: dict[str, tuple[float, float]] = {}
    for layer, names in rows.items():
        for i, name in enumerate(sorted(names)):
            pos[name] = ((i + 1) / (len(names) + 1), layer)
    arrows = {(box(a), box(b)) for a, bs in graph.edges.items() for b in bs if box(a) != box(b)}
    fig, ax = plt.subplots(figsize=(12, 1.0 * len(LAYERS) + 1))
    for layer, (title, _, what) in enumerate(LAYERS):
        ax.axhspan(layer - 0.42, layer + 0.42, color="#f2f2f2" if layer % 2 else "#e6eef7", zorder=0)
        ax.text(-0.02, layer + 0.08, title, ha="right", va="center", fontsize=10, weight="bold")
        ax.text(-0.02, layer - 0.16, what, ha="right", va="center", fontsize=7, color="#555")
    for a, b in sorted(arrows):
        (x0, y0), (x1, y1) = pos[a], pos[b]
        up = y1 > y0
        ax.annotate("", xy=(x1, y1 + (0.16 if not up else -0.16)), xytext=(x0, y0 - (0.16 if not up else -0.16)),
                    arrowprops=dict(arrowstyle="->", color="#c0392b" if up else "#34495e",
                                    lw=1.6 if up else 0.7, alpha=0.9 if up else 0.45,
                                    connectionstyle="arc3,rad=0.06"))
    for name, (x, y) in pos.items():
        mods = [m for m in graph.modules if box(m) == name]
        label = name.replace("harness.", "")
        ax.text(x, y, f"{label}\n{len(mods)} module{'s' if len(mods) != 1 else ''}", ha="center", va="center",
                fontsize=8, bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="#2c3e50"), zorder=3)
    ax.set_xlim(-0.4, 1.02)
    ax.set_ylim(-0.55, len(LAYERS) - 0.45)
    ax.axis("off")
    ax.set_title(f"harness/ imports by layer, read from the code: {len(arrows)} package arrows, "
                 f"{len(graph.upward())} upward, {len(graph.module_cycles())} module circles", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str]) -> int:
    g = read_graph()
    for c in g.module_cycles():
        print("module circle:", " <-> ".join(c))
    for c in g.package_cycles():
        print("package circle:", " <-> ".join(c))
    for u in g.upward():
        print("upward:", u)
    if "--png" in argv:
        draw(g, Path(argv[argv.index("--png") + 1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


def environment_reads(root: Path = ROOT, allowed: tuple[str, ...] = ("harness.config",)) -> list[str]:
    """Places outside ``allowed`` that read or write ``os.environ`` under a ``HARNESS_*`` name (a literal
    or a module constant holding one): the run configuration is read once, in harness/config.py."""
    out = []
    for path in sorted(root.rglob("*.py")):
        mod = module_name(path, root)
        if mod in allowed:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        consts = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
                  and isinstance(n.value.value, str) and n.value.value.startswith("HARNESS_")
                  for t in n.targets if isinstance(t, ast.Name)}

        def is_key(n: ast.AST) -> bool:
            return (isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith("HARNESS_")) \
                or (isinstance(n, ast.Name) and n.id in consts)

        def is_environ(n: ast.AST) -> bool:
            return (isinstance(n, ast.Attribute) and n.attr == "environ") or (isinstance(n, ast.Name)
                                                                              and n.id == "environ")

        for n in ast.walk(tree):
            hit = False
            if isinstance(n, ast.Call) and n.args and is_key(n.args[0]):
                f = n.func
                hit = (isinstance(f, ast.Attribute) and f.attr in ("get", "pop", "setdefault")
                       and is_environ(f.value)) or (isinstance(f, ast.Attribute) and f.attr == "getenv")
            elif isinstance(n, ast.Subscript) and is_environ(n.value) and is_key(n.slice):
                hit = True
            elif isinstance(n, ast.Compare) and is_key(n.left) and any(is_environ(c) for c in n.comparators):
                hit = True
            if hit:
                out.append(f"{path.relative_to(root.parent)}:{n.lineno}: {ast.unparse(n)}")
    return out


#: Modules that may read the run configuration (harness.config.from_env): the edges, where a command, the
#: pytest plugin or a spawned worker starts.
EDGES = ("harness.pytest_plugin", "harness.xdist_plugin", "harness.__main__", "harness.train.worker")


def is_edge(module: str) -> bool:
    return module in EDGES or module.endswith(".cli") or module.endswith("_cli")


def config_reads_below_the_edges(root: Path = ROOT) -> list[str]:
    """Calls of ``from_env()`` outside the edges: below them, values come as arguments."""
    out = []
    for path in sorted(root.rglob("*.py")):
        mod = module_name(path, root)
        if is_edge(mod) or mod == "harness.config":
            continue
        for n in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == "from_env":
                out.append(f"{path.relative_to(root.parent)}:{n.lineno}: {ast.unparse(n)}")
    return out
