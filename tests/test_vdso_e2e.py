"""Restoring with the vDSO patched (as on another kernel), then saving and restoring again."""

import pytest
from harness import example, read, uninterrupted


@pytest.mark.parametrize("prog,bp", [("clock", "check_clocks"), ("cpuhop", "hop")])
def test_patched_vdso_restore_then_save_and_restore_again(sessions, tmp_path, prog, bp):
    argv = [example(prog), "12", "5"]
    outs = [str(tmp_path / f"out{i}") for i in range(3)]
    img1, img2 = str(tmp_path / "1.img"), str(tmp_path / "2.img")
    s = sessions()
    s.start(argv, outs[0], breakpoint=f"{bp} if step == 3")
    s.save(img1)
    s.cli("kill")

    r = sessions()
    out = r.restore(img1, outs[1], "/dev/null", "--vdso=patch")
    assert "vDSO: patch" in out
    maps = r.cli("info proc mappings")
    assert "[vdso]" in maps
    r.cli(f"break {bp} if step == 7")
    assert r.resume("-exec-continue").get("reason") == "breakpoint-hit"
    r.save(img2)
    info = r.cli(f"ckpt info --brief {img2}")
    assert "patched proxy of an earlier kernel's vDSO" in info
    r.cli("kill")

    q = sessions()
    assert "vDSO: move" in q.restore(img2, outs[2])
    assert q.finish().get("reason") == "exited-normally"
    text = "".join(read(o) for o in outs)
    assert text == uninterrupted(argv)
    assert "WRONG" not in text and "STALE" not in text


def test_forced_move_of_same_vdso_and_dry_run_plan(sessions, tmp_path):
    argv = [example("clock"), "6", "5"]
    img = str(tmp_path / "p.img")
    s = sessions()
    s.start(argv, str(tmp_path / "o"), breakpoint="check_clocks if step == 2")
    s.save(img)
    plan = s.cli(f"ckpt restore --dry-run --vdso=patch {img}")
    assert "patch the saved vDSO: " in plan and "clock_gettime" in plan
    assert "gdbckpt's mark of the vDSO proxy" in plan
    # The dry run changed nothing: the process is still there, at its breakpoint.
    assert "check_clocks" in s.cli("bt 1")
    plan = s.cli(f"ckpt restore --dry-run --vdso=move {img}")
    assert "move [vdso]" in plan and "patch the saved vDSO" not in plan
