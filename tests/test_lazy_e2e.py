"""ckpt restore --lazy: memory mapped from the image, pages read when first touched."""

import os
import re
import subprocess

import pytest
from harness import example, read, save_and_kill, shm_scenario, uninterrupted

from gdbckpt.mi import MiError


def test_lazy_restore_maps_the_image_and_finishes(sessions, tmp_path):
    argv = [example("bigmem"), "64", "4", "1"]
    img, before, after = (str(tmp_path / n) for n in ("p.img", "before", "after"))
    save_and_kill(sessions, img, argv, before, "sum_all")
    r = sessions()
    text = r.cli(f"ckpt restore --lazy --stdin=/dev/null --stdout={after} {img}", timeout=120)
    assert "Restored process" in text
    maps = open(f"/proc/{r.pid()}/maps").read()
    # The 64 MiB are the image's pages, mapped privately: not copied.
    assert re.search(rf"rw-p [0-9a-f]+ [0-9a-f:]+ \d+ +{re.escape(img)}", maps), maps
    # Saved again, the lazily mapped memory is stored as memory, not as the image file.
    again = str(tmp_path / "again.img")
    assert "lazy restore" in r.save(again)
    assert r.finish().get("reason") == "exited-normally"
    assert read(before) + read(after) == uninterrupted(argv)
    q = sessions()
    q.cli(f"ckpt restore --stdin=/dev/null --stdout={after} {again}", timeout=120)
    assert q.finish().get("reason") == "exited-normally"
    assert read(before) + read(after) == uninterrupted(argv)


def test_lazy_restore_keeps_shared_memory_shared(sessions, tmp_path):
    key = 0x5EED1000 + os.getpid() % 0xFFF
    argv, expected = shm_scenario(tmp_path, key)
    out, img = str(tmp_path / "out"), str(tmp_path / "p.img")
    save_and_kill(sessions, img, argv, out, "step_done if step == 3")
    subprocess.run(["ipcrm", "-M", str(key)], check=True)
    r = sessions()
    plan = r.cli(f"ckpt restore --dry-run --lazy {img}")
    # Private memory comes from the image, mapped copy-on-write; shared memory never
    # does (the copy would be private): it is filled, or mapped from its own file.
    from gdbckpt.image import Image
    shared = [v for v in Image.open(img).vmas if v.shared]
    kinds = {"sysv" if v.shm else v.kind for v in shared}
    assert kinds == {"file-shared", "shmem", "sysv"}, shared
    assert re.search(r"map 0x[0-9a-f]+ bytes of the image at", plan), plan
    for v in shared:
        start = f"{v.start:#x}"
        assert not re.search(rf"bytes of the image at {start} ", plan), (start, plan)
        assert re.search(rf"fill 0x[0-9a-f]+ bytes from the image at {start} |"
                         rf"map {start}-0x[0-9a-f]+ file fd \d+ ", plan), (start, plan)
    r.cli(f"ckpt restore --lazy {img}", timeout=120)
    assert r.finish().get("reason") == "exited-normally"
    assert read(out) == expected
    assert (tmp_path / "work" / "shared.bin").read_bytes() == \
        (tmp_path / "ref" / "shared.bin").read_bytes()


def test_lazy_refuses_a_compressed_image_and_keeps_the_process(sessions, tmp_path):
    img = str(tmp_path / "p.img")
    s = sessions()
    s.start([example("counter"), "5", "1"], str(tmp_path / "o"), breakpoint="compute_step")
    s.save(img, "--compress")
    pid = s.pid()
    with pytest.raises(MiError) as e:
        s.cli(f"ckpt restore --lazy {img}")
    assert "compressed" in e.value.msg and "without --lazy" in e.value.msg
    assert s.pid() == pid, "a refused restore must not have replaced the process"


def test_lazy_refuses_an_image_others_may_write(sessions, tmp_path):
    argv = [example("counter"), "5", "1"]
    img = str(tmp_path / "p.img")
    save_and_kill(sessions, img, argv, str(tmp_path / "before"), "compute_step")
    os.chmod(img, 0o666)
    r = sessions()
    with pytest.raises(MiError) as e:
        r.cli(f"ckpt restore --lazy {img}", timeout=120)
    assert "may be written by others" in e.value.msg and "mode 666" in e.value.msg
    assert r.pid() == 0


def test_what_is_restored_is_what_was_checked(tmp_path):
    """An image swapped for another between the check and the restore: the stub reads the
    file that was opened and checked, never the path again."""
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from harness import BATCH, wait_for_output, wait_gone

    from gdbckpt.engine import restore as engine
    images, outs = [], []
    for steps in ("30", "40"):
        out, img = str(tmp_path / f"out{steps}"), str(tmp_path / f"p{steps}.img")
        with open(out, "w") as f:
            p = subprocess.Popen([example("counter"), steps, "20"], stdout=f,
                                 stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_output(out, r"^step 2 ")
        subprocess.run([*BATCH, str(p.pid), "-o", img, "--kill", "--no-sync"], check=True,
                       capture_output=True)
        p.wait()
        images.append(img)
        outs.append(out)
    prepared = engine.prepare(images[0], stdio={0: "/dev/null"})
    os.replace(images[1], images[0])          # the path now names the other image
    r = engine.restore(prepared, stopped=False, new_session=True)
    wait_gone(r.pid)
    assert read(outs[0]) == uninterrupted([example("counter"), "30", "20"])
