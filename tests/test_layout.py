"""Library modules never import the CLIs (muse_jax/cli/ imports the library, not the reverse)."""
import ast
import pathlib

import muse_jax

PACKAGE = pathlib.Path(muse_jax.__file__).parent


def _imported_modules(path: pathlib.Path):
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      yield node.module
      yield from (f"{node.module}.{a.name}" for a in node.names)


def test_library_modules_do_not_import_the_clis():
  offenders = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(PACKAGE)
    if rel.parts[0] == "cli":
      continue
    bad = sorted({m for m in _imported_modules(path) if m == "muse_jax.cli"
                  or m.startswith("muse_jax.cli.")})
    if bad:
      offenders[str(rel)] = bad
  assert not offenders, f"library modules import the CLIs: {offenders}"


def test_the_check_sees_an_import_of_a_cli(tmp_path):
  probe = tmp_path / "probe.py"
  probe.write_text("def f():\n  from muse_jax.cli import encode\n")
  assert "muse_jax.cli.encode" in set(_imported_modules(probe))


def _user_error_classes(path: pathlib.Path):
  """The user-error classes (errors.py's names) a module defines."""
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.ClassDef) and node.name in ("UsageError", "PipelineError",
                                                        "CheckpointError"):
      yield node.name


def test_user_errors_are_defined_once_in_errors_py():
  # One UsageError for every entry point (issue 16): four copies used to need a list of classes,
  # and muse-eval matched two more by their class names.
  defined = {str(p.relative_to(PACKAGE)): list(_user_error_classes(p))
             for p in sorted(PACKAGE.rglob("*.py"))}
  assert {k: v for k, v in defined.items() if v and k != "errors.py"} == {}
  assert sorted(defined["errors.py"]) == ["CheckpointError", "PipelineError", "UsageError"]


def test_user_errors_are_caught_as_one_class():
  from muse_jax import checkpoint, errors, pipeline, tokenizer
  from muse_jax.cli import ema, evaluate, sample
  for cls in (checkpoint.CheckpointError, pipeline.PipelineError, tokenizer.UsageError,
              sample.UsageError, evaluate.UsageError, ema.UsageError):
    assert issubclass(cls, errors.UsageError), cls
  assert issubclass(checkpoint.CheckpointError, RuntimeError)   # callers catching it as before


def _probes_of_tasks(path: pathlib.Path):
  """getattr / hasattr calls whose object is a task (the loop must call tasks.api.Task only)."""
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr") and node.args
        and "task" in ast.unparse(node.args[0])):
      yield f"line {node.lineno}: {ast.unparse(node)}"


def test_the_loop_does_not_probe_tasks(tmp_path):
  # The stage contract is tasks/api.py's Task (issue 16): optional parts have declared defaults.
  assert list(_probes_of_tasks(PACKAGE / "train" / "loop.py")) == []
  assert list(_probes_of_tasks(PACKAGE / "cli" / "fit.py")) == []
  probe = tmp_path / "probe.py"
  probe.write_text("def f(setup):\n  return getattr(setup.task, 'online', None)\n")
  assert len(list(_probes_of_tasks(probe))) == 1


def test_every_stage_is_a_task():
  from muse_jax import tasks
  from muse_jax.tasks import api
  for name, cls in tasks.TASKS.items():
    assert issubclass(cls, api.Task), name


def test_entry_points_report_user_errors_in_one_place():
  # errors.report is the one `except` that prints "PROG: error: ..." (issue 16: each CLI had its
  # own copy and its own tuple of classes).
  printing = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
              if 'error: {e}"' in p.read_text()]
  assert printing == ["errors.py"]
