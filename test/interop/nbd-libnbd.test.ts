/**
 * Proves the NBD server's error paths and option handling against libnbd (python3-libnbd, run
 * with Debian's /usr/bin/python3): with strict mode off so the bad requests reach the server,
 * a read past the end is EINVAL, a write past the end ENOSPC, an unknown flag EINVAL and a write
 * to a read-only export EPERM — over structured and simple replies alike; in option mode a
 * refused option (STARTTLS on a server without TLS) is followed by LIST, INFO, meta-context
 * listing and a normal GO; eight connections write disjoint ranges at once and each range reads
 * back on another connection (CAN_MULTI_CONN).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { NbdServer } from '../../src/frontend/nbd/server.js';
import { MemCatalog, MemExport } from '../../src/testing/mem-export.js';

const execFileP = promisify(execFile);
/** Every test fails (never hangs) if a client does not finish. */
const T = { timeout: 90_000 };
const MiB = 1024 * 1024;
/** Debian's python, where python3-libnbd installs (the first python3 on PATH may be pyenv's). */
const PYTHON = '/usr/bin/python3';

async function python(script: string, ...args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileP(PYTHON, ['-c', script, ...args], { timeout: 60_000 });
    return stdout;
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stdout?: string; stderr?: string };
    if (err.code === 'ENOENT')
      throw new Error(`${PYTHON} is missing: install Debian packages python3 python3-libnbd`, { cause: e });
    if (err.stderr?.includes("No module named 'nbd'"))
      throw new Error('python3-libnbd is not installed', { cause: e });
    throw new Error(`python failed: ${err.message}\n${err.stdout ?? ''}\n${err.stderr ?? ''}`, { cause: e });
  }
}

const vol = new MemExport({ name: 'vol', sizeBytes: 16 * MiB });
const ro = new MemExport({ name: 'ro', sizeBytes: MiB, readOnly: true });
const logs: { msg: string; fields: Record<string, unknown> }[] = [];
const server = new NbdServer({
  catalog: new MemCatalog([vol, ro]),
  log: (_l, msg, fields) => logs.push({ msg, fields }),
});
let port = '';

before(async () => {
  port = String((await server.listen('127.0.0.1', 0)).port);
});
after(() => server.close());

const NEGATIVE = `
import errno, sys, nbd
port = sys.argv[1]

def connect(name, structured):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.connect_uri(f"nbd://127.0.0.1:{port}/{name}")
    h.set_strict_mode(0)  # let bad requests reach the server
    assert h.get_structured_replies_negotiated() == structured
    return h

def expect(what, code, fn):
    try:
        fn()
    except nbd.Error as e:
        # "command failed" means the server answered with the error (not a client-side check).
        assert e.errno == errno.errorcode[code] and "command failed" in str(e), f"{what}: {e}"
        print(what, e.errno)
        return
    raise AssertionError(f"{what}: no error")

for structured in (True, False):
    h = connect("vol", structured)
    size = h.get_size()
    mode = "structured" if structured else "simple"
    expect(f"{mode} read past end", errno.EINVAL, lambda: h.pread(4096, size - 512))
    expect(f"{mode} write past end", errno.ENOSPC, lambda: h.pwrite(b"x" * 4096, size - 512))
    expect(f"{mode} unknown flag", errno.EINVAL, lambda: h.pread(512, 0, flags=0x40))
    data = bytes(range(256)) * 16
    h.pwrite(data, 8192, flags=nbd.CMD_FLAG_FUA)
    assert h.pread(4096, 8192) == data
    print(mode, "read back ok")
    h.shutdown()

r = connect("ro", True)
expect("read-only write", errno.EPERM, lambda: r.pwrite(b"x" * 512, 0))
expect("read-only zero", errno.EPERM, lambda: r.zero(512, 0))
r.shutdown()
`;

test('libnbd: EINVAL, ENOSPC, EPERM over structured and simple replies', T, async () => {
  const out = await python(NEGATIVE, port);
  for (const mode of ['structured', 'simple']) {
    assert.match(out, new RegExp(`${mode} read past end EINVAL`));
    assert.match(out, new RegExp(`${mode} write past end ENOSPC`));
    assert.match(out, new RegExp(`${mode} unknown flag EINVAL`));
    assert.match(out, new RegExp(`${mode} read back ok`));
  }
  assert.match(out, /read-only write EPERM/);
  assert.match(out, /read-only zero EPERM/);
  assert.ok(
    vol.data.subarray(8192, 8192 + 256).equals(Buffer.from(Array.from({ length: 256 }, (_, i) => i))),
  );
});

const OPTIONS = `
import sys, nbd
h = nbd.NBD()
h.set_opt_mode(True)
h.set_tls(nbd.TLS_ALLOW)  # sends NBD_OPT_STARTTLS first; this server refuses it (no TLS)
h.set_export_name("vol")
h.add_meta_context("base:allocation")
h.connect_tcp("127.0.0.1", sys.argv[1])
assert not h.get_tls_negotiated()
names = []
h.opt_list(lambda name, desc: names.append(name))
print("list", sorted(names))
h.opt_info()
print("info", h.get_size(), h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_MAXIMUM))
contexts = []
h.opt_list_meta_context(lambda c: contexts.append(c))
print("contexts", contexts)
h.opt_go()
h.pwrite(b"\x5a" * 512, 12288)
print("go", h.can_meta_context("base:allocation"), bytes(h.pread(512, 12288)[:4]).hex())
extents = []
h.block_status(65536, 0, lambda ctx, off, ents, err: extents.extend(ents), nbd.CMD_FLAG_REQ_ONE)
print("extents", len(extents) // 2)
h.shutdown()
`;

test('libnbd option mode: a refused option, then LIST, INFO, meta contexts and GO', T, async () => {
  const out = await python(OPTIONS, port);
  assert.match(out, /list \['ro', 'vol'\]/);
  assert.match(out, new RegExp(`info ${16 * MiB} 512 ${32 * MiB}`));
  assert.match(out, /contexts \['base:allocation'\]/);
  assert.match(out, /go True 5a5a5a5a/);
  assert.match(out, /extents 1/, 'REQ_ONE gives exactly one extent');
  const refused = logs.find((l) => l.msg === 'option refused' && l.fields.option === 5);
  assert.equal(refused?.fields.reply, 0x80000001, 'STARTTLS was sent and refused with ERR_UNSUP');
});

const MULTI_CONN = `
import sys, nbd
port, n, span = sys.argv[1], 8, 1 << 20
hs = []
for i in range(n):
    h = nbd.NBD()
    h.connect_uri(f"nbd://127.0.0.1:{port}/vol")
    assert h.can_multi_conn()
    hs.append(h)
bufs = [nbd.Buffer.from_bytearray(bytearray([0x40 + i]) * span) for i in range(n)]
cookies = [h.aio_pwrite(bufs[i], (i + 4) * span) for i, h in enumerate(hs)]
pending = set(range(n))
while pending:
    for i in list(pending):
        hs[i].poll(0)
        if hs[i].aio_command_completed(cookies[i]):
            pending.discard(i)
hs[0].flush()
for i in range(n):
    got = hs[(i + 1) % n].pread(span, (i + 4) * span)
    assert got == bytearray([0x40 + i]) * span, f"range {i}"
print("ok", n)
for h in hs:
    h.shutdown()
`;

test(
  'eight connections write disjoint ranges at once; each reads back on another connection',
  T,
  async () => {
    let peak = 0;
    const timer = setInterval(() => {
      peak = Math.max(peak, server.connectionCount);
    }, 5);
    try {
      assert.match(await python(MULTI_CONN, port), /ok 8/);
    } finally {
      clearInterval(timer);
    }
    assert.equal(peak, 8, 'all eight connections were open at once');
    for (let i = 0; i < 8; i++) {
      const at = (i + 4) * MiB;
      assert.ok(vol.data.subarray(at, at + MiB).equals(Buffer.alloc(MiB, 0x40 + i)), `range ${i}`);
    }
  },
);
