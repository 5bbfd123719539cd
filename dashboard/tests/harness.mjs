// What the browser tests share: child processes with their logs kept, free ports, waiting,
// and fv-edge daemons watching a folder. Real parts only (see e2e.mjs, fleet-e2e.mjs).
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer, Socket } from 'node:net';
import { join, resolve } from 'node:path';

export const children = [];

export function start(name, cmd, args, opts = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  child.log = '';
  child.stdout.on('data', (d) => { child.log += d; });
  child.stderr.on('data', (d) => { child.log += d; });
  child.name = name;
  children.push(child);
  return child;
}

export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => ok(port)); });
  });
}

export async function waitFor(what, timeoutMs, f) {
  const t0 = Date.now();
  for (;;) {
    const v = await f();
    if (v) return Date.now() - t0;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function listening(port) {
  return new Promise((ok) => {
    const s = new Socket();
    s.once('connect', () => { s.destroy(); ok(true); });
    s.once('error', () => ok(false));
    s.connect(port, '127.0.0.1');
  });
}

export const mosquittoBin = () => process.env.MOSQUITTO
  ?? ['/usr/sbin/mosquitto', '/usr/bin/mosquitto', '/usr/local/sbin/mosquitto'].find(existsSync);

/** An fv-edge daemon at `site/device`, watching a folder of its own under `work`. */
export function unit(edgeBin, work, models, site, device, mqttPort) {
  const dir = join(work, device);
  mkdirSync(join(dir, 'watch'), { recursive: true });
  const child = start(device, edgeBin, [
    'run', '-v', '--watch', join(dir, 'watch'), '--state', join(dir, 'state'), '--models', models,
    '--site', site, '--device-id', device, '--mqtt', `mqtt://127.0.0.1:${mqttPort}`,
    '--heartbeat', '1', '--settle-ms', '200',
  ]);
  child.watch = join(dir, 'watch');
  return child;
}

export const chromiumArgs = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/**
 * Ends a browser test: on failure the error, a screenshot and every child's last log lines;
 * then the browser and the children go, the work folder too when all passed and no ARTIFACTS
 * folder asked to keep it. Exits with the test's status.
 */
export async function finish(name, { error, browser, page, artifacts, work }) {
  const ok = !error;
  if (error) {
    console.error(`${name} FAILED: ${error.stack ?? error}`);
    if (page) {
      await page.screenshot({ path: join(artifacts, `${name}-failure.png`), fullPage: true })
        .catch(() => {});
    }
    for (const c of children) console.error(`--- ${c.name} ---\n${c.log.slice(-3000)}`);
  }
  if (browser) await browser.close().catch(() => {});
  for (const c of children) c.kill('SIGKILL');
  if (ok && !process.env.ARTIFACTS) rmSync(work, { recursive: true, force: true });
  console.log(`${name} ${ok ? 'ok' : 'failed'}`);
  process.exit(ok ? 0 : 1);
}

/**
 * What every browser test starts from: the repository, the models, Chromium and Mosquitto
 * (from the environment or their usual places), a fresh work folder, and where screenshots go.
 */
export function setup(name) {
  const repo = resolve(new URL('../..', import.meta.url).pathname);
  const mosquitto = mosquittoBin();
  if (!mosquitto) throw new Error('mosquitto not found: apt-get install mosquitto');
  const work = mkdtempSync(join(tmpdir(), `fv-${name}-`));
  const artifacts = process.env.ARTIFACTS ?? work;
  mkdirSync(artifacts, { recursive: true });
  return {
    repo,
    models: process.env.FV_MODELS ?? join(repo, 'models'),
    chromiumPath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    mosquitto,
    work,
    artifacts,
  };
}
