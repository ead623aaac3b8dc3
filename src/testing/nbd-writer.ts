/**
 * A real NBD client (libnbd through Debian's python3-libnbd) driven line by line from a test: one
 * process per writer, one request at a time, each write acknowledged by the server before `write`
 * resolves. Tests use it where a workload must mix NBD writes (no host time) with native-client
 * writes (with host times) in one dependent sequence.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

const SCRIPT = `
import sys, base64, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    off, data = line.split()
    try:
        h.pwrite(base64.b64decode(data), int(off))
        print("ok", flush=True)
    except Exception as e:
        print("err " + str(e).replace("\\n", " "), flush=True)
`;

export interface NbdWriter {
  write(offset: number, data: Buffer): Promise<void>;
  close(): Promise<void>;
}

export async function nbdWriter(uri: string): Promise<NbdWriter> {
  const child = spawn('/usr/bin/python3', ['-c', SCRIPT, uri], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const waiting: ((line: string) => void)[] = [];
  let dead: string | undefined;
  createInterface({ input: child.stdout! }).on('line', (l) => waiting.shift()?.(l));
  const exited = new Promise<void>((resolve) =>
    child.on('exit', (code) => {
      dead = `nbd writer exited (${code}): ${stderr.trim().split('\n').pop() ?? ''}`;
      for (const w of waiting.splice(0)) w(`err ${dead}`);
      resolve();
    }),
  );
  const next = (): Promise<string> =>
    dead ? Promise.resolve(`err ${dead}`) : new Promise((r) => waiting.push(r));
  const first = await next();
  if (first !== 'ready') throw new Error(`nbd writer for ${uri} did not start: ${first}`);
  return {
    async write(offset, data) {
      if (dead) throw new Error(dead);
      const reply = next();
      child.stdin!.write(`${offset} ${data.toString('base64')}\n`);
      const r = await reply;
      if (r !== 'ok') throw new Error(`NBD write at ${offset}: ${r.slice(4)}`);
    },
    async close() {
      child.stdin!.end();
      await exited;
    },
  };
}
