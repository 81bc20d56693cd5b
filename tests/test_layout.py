"""The package follows docs/design.md: which folder may import what, the
benchmark study outside the library, and the model index that mim and the
inferencer read."""
import ast
import importlib.util
import os
import os.path as osp
import re


ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PKG = osp.join(ROOT, 'embedmask_mmdet')
# top-level subpackage -> the subpackages it must not import
FORBIDDEN = {
    'models': {'datasets', 'deploy', 'apis', 'engine'},
    'datasets': {'models', 'deploy', 'apis'},
    'engine': {'models', 'deploy', 'apis'},
    'utils': {'models', 'datasets', 'deploy', 'apis', 'engine'},
}
NEVER = ('matplotlib', 'seaborn', 'analysis_tools', 'tools')


def package_imports():
    """(module path, subpackage, imported top-level names, imported
    embedmask_mmdet subpackages) for every module of the library."""
    for folder, _, files in os.walk(PKG):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = osp.join(folder, name)
            rel = osp.relpath(path, PKG).split(os.sep)
            sub = rel[0] if len(rel) > 1 else None
            tree = ast.parse(open(path).read(), path)
            tops, subs = set(), set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    if node.level:  # relative: resolve against the file
                        base = rel[:-1][:len(rel) - 1 - (node.level - 1)]
                        target = base + (node.module.split('.')
                                         if node.module else [])
                        if target:
                            subs.add(target[0])
                        else:  # 'from .. import x': x is the subpackage
                            subs.update(a.name for a in node.names)
                        continue
                    names = [node.module]
                else:
                    continue
                for n in names:
                    parts = n.split('.')
                    tops.add(parts[0])
                    if parts[0] == 'embedmask_mmdet' and len(parts) > 1:
                        subs.add(parts[1])
            yield osp.relpath(path, ROOT), sub, tops, subs


def test_import_rules_of_docs_design():
    bad = []
    for path, sub, tops, subs in package_imports():
        for never in NEVER:
            if never in tops:
                bad.append(f'{path} imports {never}')
        for other in FORBIDDEN.get(sub, ()):
            if other in subs:
                bad.append(f'{path} ({sub}) imports {other}')
    assert not bad, '\n'.join(bad)


def test_the_benchmark_study_is_not_in_the_library():
    # the installed package, as users import it (no subprocess: the package
    # is imported already, a fresh interpreter would cost ~9 s)
    import embedmask_mmdet
    assert importlib.util.find_spec('embedmask_mmdet.benchmark') is None
    assert not any(name.startswith('benchmark') for name in
                   os.listdir(osp.dirname(embedmask_mmdet.__file__)))


def test_design_doc_lists_every_library_folder():
    text = open(osp.join(ROOT, 'docs/design.md')).read()
    for name in sorted(os.listdir(PKG)):
        if osp.isdir(osp.join(PKG, name)) and not name.startswith('_'):
            assert f'{name}/' in text, f'docs/design.md omits {name}/'


# a repository path as the docs write it: a top-level folder, then path
# characters; globs, placeholders and URLs are not paths
DOC_PATH = re.compile(
    r'(?<![\w/.:-])((?:embedmask_mmdet|configs|tools|tests|docs|data)/'
    r'[\w./-]*[\w/])')


def named_paths(text: str):
    for match in DOC_PATH.finditer(text):
        path = match.group(1).rstrip('/.')
        if any(c in path for c in '*<>{}') or path.startswith('data/'):
            continue  # data/ is made by make data / the tools
        yield path


# paths the docs name that are not in the repository, on purpose
NOT_IN_REPO = {
    # the config custom_dataset.md has the user write
    'configs/my_embedmask.py',
    # the CPU config's name at the older commit real_data.md measures
    'configs/embedmask/embedmask_r18_fpn_synthetic-cpu.py',
}


def test_every_repository_path_in_the_docs_exists():
    """Every embedmask_mmdet/, configs/, tools/, tests/ or docs/ path that
    the README or a docs page names exists (a file, a folder, or a module
    path without .py), here or, for the peers' configs, in mmdet's package
    (.mim)."""
    import mmdet
    mim = osp.join(osp.dirname(mmdet.__file__), '.mim')
    missing = []
    pages = [osp.join(ROOT, 'README.md')] + sorted(
        osp.join(ROOT, 'docs', f) for f in os.listdir(osp.join(ROOT, 'docs'))
        if f.endswith('.md'))
    for page in pages:
        with open(page) as f:
            text = f.read()
        for path in set(named_paths(text)):
            full = osp.join(ROOT, path)
            if path not in NOT_IN_REPO and not (
                    osp.exists(full) or osp.exists(full + '.py')
                    or osp.exists(osp.join(mim, path))):
                missing.append(f'{osp.relpath(page, ROOT)}: {path}')
    assert not missing, 'paths named in the docs that do not exist:\n' + \
        '\n'.join(sorted(missing))
