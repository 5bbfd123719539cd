// Unit tests of the fleet state (node --test): what the page shows, judged from messages.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Fleet, settings, STALE_INTERVALS, zonedDay } from '../fleet.js';

const P = 'fractuvision/v1';
const result = (id, finding, p, at = new Date().toISOString()) =>
  JSON.stringify({ schema: 'fractuvision.result/1', id, finding, fracture_probability: p,
    processed_at: at, source: { kind: 'file', name: 'Smith_John.jpg' }, boxes: [] });

test('status, heartbeat and last will make a unit online, stale, offline', () => {
  const f = new Fleet(P);
  const t0 = Date.parse('2026-11-29T10:00:00Z');
  f.apply(`${P}/clinic-a/unit-1/status`, JSON.stringify({ state: 'online', models: [] }), t0);
  f.apply(`${P}/clinic-a/unit-1/heartbeat`,
    JSON.stringify({ interval_s: 5, outbox_depth: 3, processed: 7, failed: 1 }), t0);
  const u = f.units.get('clinic-a/unit-1');
  assert.equal(f.health(u, t0 + 1000), 'online');
  assert.equal(u.outboxDepth, 3);
  assert.equal(f.health(u, t0 + (STALE_INTERVALS * 5 - 1) * 1000), 'online');
  assert.equal(f.health(u, t0 + (STALE_INTERVALS * 5 + 1) * 1000), 'stale');
  f.apply(`${P}/clinic-a/unit-1/status`, JSON.stringify({ state: 'offline', reason: 'connection lost' }), t0);
  assert.equal(f.health(u, t0), 'offline');
  assert.equal(u.reason, 'connection lost');
  // An empty retained status removes a decommissioned unit.
  f.apply(`${P}/clinic-a/unit-1/status`, '', t0);
  assert.equal(f.units.size, 0);
});

test('the PACS outbox depth is shown where the unit has a PACS, and its stall reason', () => {
  const f = new Fleet(P);
  const t0 = Date.parse('2026-11-29T10:00:00Z');
  f.apply(`${P}/clinic-a/unit-1/heartbeat`, JSON.stringify({ outbox_depth: 0 }), t0);
  const u = f.units.get('clinic-a/unit-1');
  assert.equal(u.pacsDepth, null);
  f.apply(`${P}/clinic-a/unit-1/heartbeat`,
    JSON.stringify({ outbox_depth: 0, pacs_outbox_depth: 4, pacs: 'cannot associate' }), t0);
  assert.equal(u.pacsDepth, 4);
  assert.equal(u.pacs, 'cannot associate');
});

test('a redelivered result (QoS 1, same id) is listed and counted once', () => {
  const f = new Fleet(P);
  const now = Date.now();
  assert.equal(f.apply(`${P}/s/d/result`, result('a', 'fracture', 0.9), now), 'result');
  assert.equal(f.apply(`${P}/s/d/result`, result('a', 'fracture', 0.9), now), null);
  f.apply(`${P}/s/d/result`, result('b', 'no_fracture', 0.1), now);
  f.apply(`${P}/s/d/result`, JSON.stringify({ id: 'c', error: { code: 'decode', message: 'x' } }), now);
  assert.equal(f.recent.length, 3);
  assert.deepEqual(f.today(now).get('s'), { fracture: 1, suspicious: 0, no_fracture: 1, not_applicable: 0, failed: 1 });
  assert.equal(f.recent[0].finding, 'failed');
});

test('yesterday\'s results are not counted today', () => {
  const f = new Fleet(P);
  const now = Date.now();
  f.apply(`${P}/s/d/result`, result('old', 'fracture', 0.9, new Date(now - 86400e3 * 2).toISOString()), now);
  assert.equal(f.today(now).size, 0);
  assert.equal(f.recent.length, 1);
});

test('the page keeps no file names or study data', () => {
  const f = new Fleet(P);
  f.apply(`${P}/s/d/result`, result('a', 'fracture', 0.9), Date.now());
  assert.ok(!JSON.stringify(f.recent).includes('Smith'));
});

test('other prefixes and malformed topics are ignored; bad JSON throws', () => {
  const f = new Fleet(P);
  assert.equal(f.apply('other/v1/s/d/status', '{}', 0), null);
  assert.equal(f.apply(`${P}/s/status`, '{}', 0), null);
  assert.throws(() => f.apply(`${P}/s/d/heartbeat`, 'not json', 0));
});

test('settings: query over config file over defaults', () => {
  const s = settings(new URLSearchParams('broker=ws://q:9001'), { broker: 'ws://f:1', prefix: 'x/v1' });
  assert.equal(s.broker, 'ws://q:9001');
  assert.equal(s.prefix, 'x/v1');
  assert.equal(settings(new URLSearchParams(''), null).prefix, 'fractuvision/v1');
  assert.equal(settings(new URLSearchParams(''), null).broker, null);
});

test('a heartbeat that says the publisher is stalled shows on the unit, and clears', () => {
  const f = new Fleet(P);
  f.apply(`${P}/s/d/heartbeat`, JSON.stringify({ interval_s: 30, publisher: 'publisher stalled: read-only outbox' }), 0);
  assert.equal(f.units.get('s/d').publisher, 'publisher stalled: read-only outbox');
  f.apply(`${P}/s/d/heartbeat`, JSON.stringify({ interval_s: 30, publisher: null }), 1000);
  assert.equal(f.units.get('s/d').publisher, null);
});

test('history from fv-fleet, then live: a result already stored is counted once', () => {
  const f = new Fleet(P);
  const now = Date.parse('2026-12-05T12:00:00Z');
  f.loadHistory({
    sites: [{ site: 'tokyo', zone: 'Asia/Tokyo', today: '2026-12-05' }],
    counts: [
      { site: 'tokyo', day: '2026-12-05', fracture: 2, suspicious: 0, no_fracture: 5, not_applicable: 1, failed: 0 },
      { site: 'tokyo', day: '2026-12-04', fracture: 1, suspicious: 1, no_fracture: 0, not_applicable: 0, failed: 0 },
    ],
    results: [{ id: 'h1', site: 'tokyo', device: 'u1', processed_at: '2026-12-05T11:00:00Z',
      finding: 'fracture', probability: 0.9, boxes: 1, error: null }],
    units: [
      { site: 'tokyo', device: 'u1', state: 'online', heartbeat_at: '2026-12-05T11:59:58Z',
        interval_s: 10, outbox_depth: 0, online_24h: 0.5 },
      { site: 'tokyo', device: 'old', state: 'gone', last_seen: '2026-11-01T00:00:00Z' },
    ],
  });
  assert.ok(f.history);
  assert.deepEqual(f.today(now).get('tokyo'), { fracture: 2, suspicious: 0, no_fracture: 5, not_applicable: 1, failed: 0 });
  assert.equal(f.health(f.units.get('tokyo/old'), now), 'gone');
  assert.equal(f.units.get('tokyo/u1').online24h, 0.5);
  // The stored result comes again live (QoS 1 redelivery): not counted twice.
  assert.equal(f.apply(`${P}/tokyo/u1/result`, result('h1', 'fracture', 0.9, '2026-12-05T11:00:00Z'), now), null);
  // A new one, at 20:00 UTC on the 4th: already the 5th in Tokyo, so today there.
  f.apply(`${P}/tokyo/u1/result`, result('n1', 'suspicious', 0.4, '2026-12-04T20:00:00Z'), now);
  assert.equal(f.today(now).get('tokyo').suspicious, 1);
  const s = f.series('tokyo', 2, now);
  assert.deepEqual(s.map((d) => d.day), ['2026-12-04', '2026-12-05']);
  assert.equal(s[0].fracture + s[0].suspicious, 2);
  // A gone unit that speaks again is back.
  f.apply(`${P}/tokyo/old/heartbeat`, JSON.stringify({ interval_s: 10 }), now);
  assert.equal(f.health(f.units.get('tokyo/old'), now), 'online');
});

test('a day in a site\'s own zone', () => {
  assert.equal(zonedDay(new Date('2026-12-04T20:00:00Z'), 'Asia/Tokyo'), '2026-12-05');
  assert.equal(zonedDay(new Date('2026-12-04T20:00:00Z'), 'America/New_York'), '2026-12-04');
});
