"""Process trees: a process saved with its children, and restored with them.

examples/family.c holds a worker it talks to through pipes, a zombie child and a
child in its own process group sharing MAP_SHARED memory; each child is reaped
with its status at the end. bash pipelines and a multiprocessing Pool run on too.
"""

import json
import os
import re
import signal
import subprocess

import pytest
from harness import (
    NOBODY,
    batch,
    batch_restore,
    by_pid_and_back,
    error_of,
    example,
    pid_cursor,
    read,
    reap,
    restore_and_finish,
    rewrite_record,
    saved_by_pid,
    spawn,
    uninterrupted,
    uninterrupted_later,
    wait_for_output,
    wait_gone,
)

from gdbckpt.image import format as fmt
from gdbckpt.libc import libc


@pytest.fixture(autouse=True)
def subreaper():
    """The test is a child subreaper while it runs: the children of a saved tree whose
    root was killed come to it, and reap() reaps them, so that their pids are free for
    the restore (this machine's init does not reap orphans); so does a pid namespace's
    init. Whatever is left is reaped at the end."""
    libc().prctl(36, 1, 0, 0, 0)        # PR_SET_CHILD_SUBREAPER
    yield
    libc().prctl(36, 0, 0, 0, 0)
    while True:
        try:
            if not os.waitpid(-1, os.WNOHANG)[0]:
                break
        except ChildProcessError:
            break


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
FAMILY_END = ("subreaper 1\nown pid kept 1, /proc/self agrees 1\nzombie exited 7\n"
              "worker exited 5\ndoubler exited 13\n")


def kill_tree(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reap(pids)


def test_a_family_comes_back_in_a_fresh_gdb(sessions, tmp_path):
    argv = [example("family"), "12", "5"]
    want = uninterrupted(argv)
    assert want.endswith(FAMILY_END), want
    out, img = str(tmp_path / "out"), str(tmp_path / "f.img")
    s = sessions()
    s.start(argv, out, breakpoint="checkpoint_here")
    text = s.save(img)
    m = re.search(r"with 3 descendant\(s\) \(([\d, ]+), 1 of them zombies\)", text)
    assert m, text
    children = [int(p) for p in m.group(1).split(", ")]
    assert "cannot be restored" not in text and "another process" not in text, text
    s.cli("kill")
    kill_tree(children)
    r, text, pid = restore_and_finish(sessions, img)
    assert f"the rest of its tree: {', '.join(map(str, children))}" in text, text
    assert read(out) == want


def test_a_family_whose_pids_are_taken_comes_back_in_a_pid_namespace(sessions, tmp_path):
    """Saved in GDB and killed there: its children live on, holding their pids. The
    restore makes the tree in a new pid namespace, where every pid is the saved one."""
    argv = [example("family"), "12", "5"]
    want = uninterrupted(argv)
    out, img = str(tmp_path / "out"), str(tmp_path / "f.img")
    s = sessions()
    s.start(argv, out, breakpoint="checkpoint_here")
    text = s.save(img)
    children = [int(p) for p in re.search(r"descendant\(s\) \(([\d, ]+),", text)[1].split(", ")]
    s.cli("kill")
    try:
        r, text, pid = restore_and_finish(sessions, img)
        assert "it runs in a new pid namespace" in text, text
        assert pid not in children and not re.search(rf"\b{pid}\b", " ".join(argv))
        assert read(out) == want
    finally:
        kill_tree(children)


def test_a_family_saved_by_pid_comes_back_headless(tmp_path):
    argv = [example("family"), "30", "15"]
    want = uninterrupted_later(argv)
    out, img = str(tmp_path / "out"), str(tmp_path / "f.img")
    done = saved_by_pid(argv, out, img, r"^step 8:")
    info = json.loads(batch("info", img, "--json", check=0).stdout)
    assert [m["exit_status"] for m in info["members"]].count(7 << 8) == 1, info["members"]
    plan = batch("restore", img, "--dry-run", check=0).stdout
    assert plan.count("--- process") == 2 and "a zombie for" in plan, plan
    assert "[shared with the tree]" in plan and "take the shared memory object" in plan
    cursor = pid_cursor()
    r = batch_restore(img)
    # Its children were reaped (saved_by_pid): every pid comes back as it was.
    restored = json.loads(r.stdout.splitlines()[-1])
    assert restored["pid"] == done["pid"] and "namespace" not in r.stdout, r.stdout
    # Asking for old pids did not rewind the kernel's: the next process gets a new one.
    assert pid_cursor() >= cursor
    assert sorted(restored["members"].values()) == sorted(done["members"])
    reap(json.loads(r.stdout.splitlines()[-1])["members"].values())
    assert read(out) == want()
    assert read(out).endswith(FAMILY_END)


def test_single_saves_the_one_process_and_names_what_it_misses(tmp_path):
    out, img = str(tmp_path / "out"), str(tmp_path / "f.img")
    p = spawn([example("family"), "400", "20"], out)
    try:
        wait_for_output(out, r"^step 3:")
        r = batch(str(p.pid), "-o", img, "--single", "--json", check=0)
        done = json.loads(r.stdout.splitlines()[-1])
        assert done["members"] == []
        assert any("another process" in n for n in done["not_restorable"]), done
        assert any("are not saved (--single)" in n and "family" in n
                   for n in done["not_restorable"]), done
        brief = batch("info", img, "--brief", check=0).stdout
        for n in done["not_restorable"]:
            assert brief.count(n) == 1, brief      # under "Not restored", not also a note
    finally:
        p.kill()
        p.wait()


def test_a_bash_pipeline_with_a_while_read_loop_finishes_right(tmp_path):
    argv = ["/bin/bash", os.path.join(EXAMPLES, "pipeline.sh"), "30"]
    done, out = by_pid_and_back(argv, r"^line 8 ", tmp_path)
    assert len(done["members"]) >= 2, done         # two subshells, and maybe a sleep
    assert out.endswith("line 30 sum 465\npipeline done\n")


def test_a_multiprocessing_pool_in_the_middle_of_a_map_finishes_right(tmp_path):
    argv = ["/usr/bin/python3", os.path.join(EXAMPLES, "pool.py"), "50"]
    done, out = by_pid_and_back(argv, r"^result 15 ", tmp_path)
    assert len(done["members"]) == 2, done
    assert out.endswith("result 49 2401\npool done\n")


def user_namespaces() -> bool:
    """Whether nobody may make a user namespace here."""
    return subprocess.run([*NOBODY, "unshare", "-U", "true"], capture_output=True).returncode == 0


def test_an_unprivileged_tree_whose_pids_are_taken_sees_its_own_pids(shared_dir):
    """As nobody: the saved tree stays (stopped), holding its pids; the restore makes a
    user and pid namespace where every pid is the saved one, and no capability is left."""
    argv = [example("family"), "40", "25"]
    want = uninterrupted(argv)
    out, img = os.path.join(shared_dir, "out"), os.path.join(shared_dir, "f.img")
    p = subprocess.Popen([*NOBODY, "sh", "-c", f'exec "$0" "$@" > {out}', *argv],
                         stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    members = []
    try:
        wait_for_output(out, r"^step 5:")
        done = json.loads(batch(str(p.pid), "-o", img, "--stop", "--json", prefix=NOBODY,
                                check=0).stdout.splitlines()[-1])
        members = done["members"]
        if not user_namespaces():
            # A chroot (the Debian 13 run) or a policy refuses them: one line says so.
            err = batch("restore", img, prefix=NOBODY, check=1).stderr.strip()
            assert "unshare failed: Operation not permitted" in err, err
            assert len(err.splitlines()) == 1 and "Traceback" not in err, err
            return
        r = batch("restore", img, "--json", prefix=NOBODY, check=0)
        restored = json.loads(r.stdout.splitlines()[-1])
        assert "user namespace, where its processes have their saved pids" in r.stdout
        with open(f"/proc/{restored['pid']}/status") as f:
            status = f.read()
        assert re.search(r"^CapEff:\s+0+$", status, re.M), status
        assert re.search(r"^CapPrm:\s+0+$", status, re.M), status
        wait_gone(restored["pid"])
        assert read(out) == want
    finally:
        p.kill()
        p.wait()
        kill_tree(members)


def test_debug_tree_makes_every_process_an_inferior_stopped_where_it_was(sessions, tmp_path):
    argv = [example("family"), "12", "5"]
    want = uninterrupted(argv)
    out, img = str(tmp_path / "out"), str(tmp_path / "f.img")
    s = sessions()
    s.start(argv, out, breakpoint="checkpoint_here")
    children = [int(p) for p in re.search(r"descendant\(s\) \(([\d, ]+),", s.save(img))[1]
                .split(", ")]
    s.cli("kill")
    kill_tree(children)
    r = sessions()
    r.cli(f"ckpt restore --debug-tree {img}", timeout=120)
    inferiors = r.cli("info inferiors")
    assert len(re.findall(r"process \d+", inferiors)) == 3, inferiors    # not the zombie
    assert re.search(r"\*\s+1\s+process", inferiors), inferiors          # the root's current
    stacks = ""
    for num in (2, 3):
        r.cli(f"inferior {num}")
        stacks += r.cli("bt")
        r.cli("detach")                     # it runs on
    assert "doubler (" in stacks and "worker (" in stacks, stacks
    r.cli("inferior 1")
    r.cli("delete")
    stop = r.finish()
    assert stop.get("reason") == "exited-normally", stop
    assert read(out) == want


def test_a_sysv_segment_two_processes_attach_is_one_after_the_restore(tmp_path):
    done, out = by_pid_and_back([example("sysvpair"), "30", "15"], r"^step 8:", tmp_path)
    assert len(done["members"]) == 1, done
    assert out.endswith("step 30: the child says 1030\nchild exited 0\n")


def test_unix_socket_pairs_between_two_processes_keep_their_queued_data(tmp_path):
    done, out = by_pid_and_back([example("sockpair"), "30", "15"], r"^step 8:", tmp_path)
    assert not any("peer is another process" in n for n in done["notes"]), done
    assert out.endswith("queued: greetings from the child\nchild exited 4\n")


def test_in_gdb_single_names_the_children_and_a_bad_tree_is_a_one_line_error(sessions,
                                                                             tmp_path):
    argv = [example("family"), "12", "5"]
    out, img = str(tmp_path / "out"), str(tmp_path / "f.img")
    s = sessions()
    s.start(argv, out, breakpoint="checkpoint_here")
    single = s.save(str(tmp_path / "one.img"), "--single")
    assert "are not saved (--single)" in single and "descendant" not in single, single
    info = s.cli(f"ckpt info --brief {tmp_path / 'one.img'}")
    # Under "Not restored" only, not again under Notes.
    assert info.count("are not saved (--single)") == 1, info
    s.save(img)
    s.cli("kill")
    zombie_of_sigchld = rewrite_record(img, fmt.RecordType.MEMBER, lambda m: {
        **m, "exit_status": 17 if m["exit_status"] is not None else None})
    assert "which no process ends with" in error_of(s, f"ckpt restore {zombie_of_sigchld}")
