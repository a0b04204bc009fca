// browser-status.mjs: the broker's status page in a real browser (Debian's Chromium, headless,
// driven by playwright-core): screenshots at desktop and phone width, the order of the connection
// cards, the revoke confirmation (a <details>, no script), and optionally the "Create consent
// link" button of one card.
//
// Usage: node tests/support/browser-status.mjs <status-url> <screenshot.png> [<card title>]
//   <status-url>    e.g. http://127.0.0.1:5555/api/status?code=<key>
//   <screenshot.png> full-page screenshot at 960 px; "-phone.png" (390 px) and, with a card title,
//                   "-link.png" (the page after pressing the button) are written beside it
//   <card title>    e.g. "demo / acme": press that card's "Create consent link" button
//
// Environment: CHROMIUM (default /usr/bin/chromium); BROWSER_TIMEOUT_MS per step (default 45000).
//
// Stdout: exactly one JSON line:
//   {"ok":true,"status":n,"headers":{..},"title":..,"text":..,"html":..,"cards":[<card titles>],
//    "confirm":{"visible_before":b,"visible_after_open":b},
//    "phone":{"viewport_width":390,"scroll_width":n},
//    "link":null|{"value":<the consent link>,"readonly":b,"status":n,"page_html":..},
//    "console":[..],"blocked":[..],"steps":[..]}
// or {"ok":false,"error":..,...} with exit code 1. Only loopback hosts are reached.

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

import { chromium } from 'playwright-core';

const [statusUrl, screenshot, cardTitle] = process.argv.slice(2);
if (!statusUrl || !screenshot) {
  process.stderr.write('usage: browser-status.mjs <status-url> <screenshot.png> [<card title>]\n');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const stepTimeout = Number(process.env.BROWSER_TIMEOUT_MS || 45000);
const beside = (suffix) => screenshot.replace(/(\.png)?$/, `${suffix}.png`);

const t0 = Date.now();
const steps = [];
const step = (name) => steps.push({ step: name, ms: Date.now() - t0 });
const consoleMessages = [];
const blocked = [];

const isLoopback = (u) => {
  try {
    const { hostname, protocol } = new URL(u);
    if (protocol === 'data:' || protocol === 'about:') return true;
    return ['127.0.0.1', 'localhost', '[::1]', '::1'].includes(hostname);
  } catch {
    return false;
  }
};

const cardTitles = (page) => page.$$eval('section.conn h3', (hs) => hs.map((h) => h.firstChild.textContent.trim()));

const profile = mkdtempSync(join(tmpdir(), 'oauth-broker-chromium-'));
let context;
let page;
let exitCode = 0;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 960, height: 900 },
    locale: 'en-US',
    timeout: stepTimeout,
  });
  context.setDefaultTimeout(stepTimeout);
  context.setDefaultNavigationTimeout(stepTimeout);
  await context.route((u) => !isLoopback(u.toString()), (route) => {
    blocked.push(route.request().url());
    return route.abort('blockedbyclient');
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => consoleMessages.push({ type: m.type(), text: m.text(), url: m.location()?.url ?? page.url() }));
  step('launched');

  const response = await page.goto(statusUrl, { waitUntil: 'load' });
  step('status page');
  mkdirSync(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  const result = {
    ok: true,
    status: response.status(),
    headers: await response.allHeaders(),
    title: await page.title(),
    text: await page.evaluate(() => document.body.innerText),
    html: await page.content(),
    cards: await cardTitles(page),
    link: null,
  };

  // The confirmation: the delete button is hidden until its <details> is opened.
  const firstCard = page.locator('section.conn').first();
  const confirm = firstCard.getByRole('button', { name: /^Yes, revoke and delete/ });
  const visibleBefore = await confirm.isVisible();
  // (A card without that confirmation, e.g. one affected by a rejected client, skips it.)
  const summary = firstCard.locator('details:not(.creds) > summary');
  if ((await summary.count()) > 0) await summary.click();
  result.confirm = { visible_before: visibleBefore, visible_after_open: await confirm.isVisible() };
  step('confirmation opened');

  // A phone.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(statusUrl, { waitUntil: 'load' });
  result.phone = {
    viewport_width: 390,
    scroll_width: await page.evaluate(() => document.documentElement.scrollWidth),
  };
  await page.screenshot({ path: beside('-phone'), fullPage: true });
  step('phone');

  if (cardTitle) {
    await page.setViewportSize({ width: 960, height: 900 });
    await page.goto(statusUrl, { waitUntil: 'load' });
    const card = page.locator('section.conn').filter({
      has: page.locator('h3', { hasText: cardTitle }),
    });
    const navigation = page.waitForNavigation({ waitUntil: 'load' });
    await card.getByRole('button', { name: 'Create consent link' }).click();
    const posted = await navigation;
    const input = page.locator('#consent-link');
    result.link = {
      status: posted?.status() ?? null,
      value: await input.inputValue(),
      readonly: await input.evaluate((el) => el.readOnly),
      page_html: await page.content(),
    };
    await page.screenshot({ path: beside('-link'), fullPage: true });
    step('consent link');
  }

  result.console = consoleMessages;
  result.blocked = blocked;
  result.steps = steps;
  process.stdout.write(`${JSON.stringify(result)}\n`);
} catch (e) {
  exitCode = 1;
  let html = null;
  try {
    html = page ? await page.content() : null;
  } catch {}
  process.stdout.write(`${JSON.stringify({
    ok: false, error: String(e?.stack ?? e), url: page?.url() ?? null, html, console: consoleMessages, blocked, steps,
  })}\n`);
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(exitCode);
