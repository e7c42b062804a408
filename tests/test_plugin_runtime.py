"""The plugin runtime end to end: the compile cache runs only what the
daemon compiled, budgets charge CPU, the pool holds what it promises,
and reloads free what they replace."""

import pathlib
import shutil
import struct
import subprocess

from conftest import BASE_CONFIG, BIN, ROOT, plugin_path
from test_plugins import access_plugin, send


def int3_text(artifact):
    """The artifact as a checkout could ship it: a valid-looking ELF whose
    code (.text) is all int3 (0xCC), without the daemon's MAC."""
    data = bytearray(artifact)
    assert data[:4] == b"\x7fELF", "not an ELF artifact"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, names_off, _ = section(shstrndx)
    filled = 0
    for i in range(shnum):
        name, offset, size = section(i)
        end = data.index(b"\0", names_off + name)
        if bytes(data[names_off + name:end]) == b".text":
            data[offset:offset + size] = b"\xcc" * size
            filled += size
    assert filled > 0, "no .text section"
    return bytes(data)


def planted(sealed):
    """A planted artifact made from a genuine one (MAC cut off)."""
    return int3_text(sealed.read_bytes()[:-32])


def test_planted_artifact_in_the_daemons_cache_is_never_run(daemon_factory, tmp_path):
    # The cache lives in the spool by default; here in a directory of the
    # test's, with the key in the spool. An artifact the daemon did not
    # seal (machine code full of int3, valid ELF layout) is compiled again,
    # never run: before, the daemon died of SIGTRAP.
    cache = tmp_path / "cache"
    config = BASE_CONFIG.replace('cache_dir = "{cache}"', f'cache_dir = "{cache}"').replace(
        'cache_key = "{cache}.key"\n', '')
    d = daemon_factory(start=False, config=config, extra=access_plugin('{ "blocked.test" = "REJECT" }'))
    d.start()
    assert send(d, "spam@blocked.test", "alice@example.test")[0] == 554
    d.stop()
    key = d.dir / "var" / "spool" / "plugin-cache.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_size == 32
    [artifact] = cache.glob("*.cwasm")
    bad = planted(artifact)
    artifact.write_bytes(bad)
    before = len(d.log_text())
    d.start()
    assert send(d, "spam@blocked.test", "alice@example.test")[0] == 554
    assert send(d, "ok@fine.test", "alice@example.test") == (250, 250)
    log = d.log_text()[before:]
    assert "its MAC does not match the cache key" in log and "compiled in" in log, log
    assert d.stop() == 0
    # Rewritten, sealed: the next start loads it.
    assert artifact.read_bytes() != bad
    before = len(d.log_text())
    d.start()
    assert send(d, "spam@blocked.test", "alice@example.test")[0] == 554
    assert "compiled in" not in d.log_text()[before:]


def test_plugin_test_never_runs_a_cache_from_the_working_directory(tmp_path):
    # `postern plugin test` in a checkout that ships
    # var/cache/plugins/<key>.cwasm (the old default, relative to the
    # working directory): the planted code never runs.
    fixture = ROOT / "plugins" / "access" / "tests" / "access.toml"
    own = tmp_path / "own-cache"
    args = ["--cache-dir", str(own), "--cache-key", str(tmp_path / "own.key")]
    p = subprocess.run([str(BIN), "plugin", "test", *args, str(fixture)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    [artifact] = own.glob("*.cwasm")
    checkout = tmp_path / "checkout"
    shipped = checkout / "var" / "cache" / "plugins"
    shipped.mkdir(parents=True)
    (shipped / artifact.name).write_bytes(planted(artifact))
    p = subprocess.run([str(BIN), "plugin", "test", str(fixture)], capture_output=True, text=True, cwd=checkout)
    assert p.returncode == 0, (p.returncode, p.stdout + p.stderr)
    assert "compiled in" in p.stderr and "(no cache)" in p.stderr, p.stderr
    # Given the checkout's directory as a cache, with a key of our own:
    # the planted file fails the MAC and is replaced.
    key = tmp_path / "k.key"
    p = subprocess.run([str(BIN), "plugin", "test", "--cache-dir", str(shipped), "--cache-key", str(key),
                        str(fixture)], capture_output=True, text=True, cwd=checkout)
    assert p.returncode == 0, (p.returncode, p.stdout + p.stderr)
    assert "its MAC does not match the cache key" in p.stderr, p.stderr
    assert key.stat().st_mode & 0o777 == 0o600
