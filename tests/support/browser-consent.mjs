// browser-consent.mjs: one consent in a real browser (Debian's Chromium, headless, driven by
// playwright-core), from the broker's auth-start URL through oidc-provider's devInteractions login
// and consent screens back to the broker's callback page.
//
// Usage: node tests/support/browser-consent.mjs <auth-start-url> <success|abort> <screenshot.png>
//   <auth-start-url>  e.g. http://127.0.0.1:5555/api/auth/start/demo?connection=c1&code=<key>
//   success           sign in (any login/password), click "Continue" on the consent screen
//   abort             sign in, then click "[ Cancel ]" on the consent screen (oidc-provider then
//                     redirects to the callback with error=access_denied)
//   <screenshot.png>  where the final page's full-page screenshot goes (directories are created)
//
// Environment: CHROMIUM (default /usr/bin/chromium); BROWSER_TIMEOUT_MS per step (default 45000).
//
// Stdout: exactly one JSON line:
//   {"ok":true,"outcome":..,"url":<final URL>,"status":<callback HTTP status>,
//    "headers":{<callback response headers>},"title":..,"text":<body innerText>,"html":<page HTML>,
//    "screenshot":<path>,"screenshot_bytes":n,"console":[{"type","text","url"}],
//    "blocked":[<non-loopback URLs the pages tried to load>],"steps":[{"step","ms"}],"duration_ms":n}
// or, on failure, {"ok":false,"error":..,"url":..,"steps":[..],"screenshot":<failure screenshot>}
// with exit code 1. Only loopback hosts are reached: every other request is aborted and listed.

import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

import { chromium } from 'playwright-core';

const [startUrl, outcome, screenshot] = process.argv.slice(2);
if (!startUrl || !['success', 'abort'].includes(outcome) || !screenshot) {
  process.stderr.write('usage: browser-consent.mjs <auth-start-url> <success|abort> <screenshot.png>\n');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const stepTimeout = Number(process.env.BROWSER_TIMEOUT_MS || 45000);

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

const profile = mkdtempSync(join(tmpdir(), 'oauth-broker-chromium-'));
let context;
let page;
let exitCode = 0;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 960, height: 900 },
    locale: 'en-US',
    timeout: stepTimeout,
  });
  step('launched');
  context.setDefaultTimeout(stepTimeout);
  context.setDefaultNavigationTimeout(stepTimeout);
  // Hermetic: the provider's dev pages @import a web font; nothing leaves the machine.
  await context.route((u) => !isLoopback(u.toString()), (route) => {
    blocked.push(route.request().url());
    return route.abort('blockedbyclient');
  });

  page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => {
    consoleMessages.push({ type: m.type(), text: m.text(), url: m.location()?.url ?? page.url() });
  });

  // The broker redirects to the provider, which shows its login screen.
  await page.goto(startUrl, { waitUntil: 'domcontentloaded' });
  await page.locator('input[name="login"]').waitFor();
  step('login screen');
  await page.locator('input[name="login"]').fill('alice');
  await page.locator('input[name="password"]').fill('any-password');
  await page.getByRole('button', { name: 'Sign-in' }).click();

  // The consent screen: approve or cancel. Either way the provider redirects to the callback.
  const approve = page.getByRole('button', { name: 'Continue' });
  await approve.waitFor();
  step('consent screen');
  const callback = page.waitForResponse(
    (r) => r.request().isNavigationRequest() && new URL(r.url()).pathname.endsWith('/api/auth/callback'),
  );
  if (outcome === 'success') {
    await approve.click();
  } else {
    await page.getByRole('link', { name: '[ Cancel ]' }).click();
  }
  const response = await callback;
  await page.waitForLoadState('load');
  step('callback page');

  mkdirSync(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  step('screenshot');

  const result = {
    ok: true,
    outcome,
    url: page.url(),
    status: response.status(),
    headers: await response.allHeaders(),
    title: await page.title(),
    text: await page.evaluate(() => document.body.innerText),
    html: await page.content(),
    screenshot,
    screenshot_bytes: statSync(screenshot).size,
    console: consoleMessages,
    blocked,
    steps,
    duration_ms: Date.now() - t0,
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
} catch (e) {
  exitCode = 1;
  let failureShot = null;
  if (page) {
    failureShot = screenshot.replace(/(\.png)?$/, '.failure.png');
    try {
      mkdirSync(dirname(failureShot), { recursive: true });
      await page.screenshot({ path: failureShot, fullPage: true });
    } catch {
      failureShot = null;
    }
  }
  let html = null;
  try {
    html = page ? await page.content() : null;
  } catch {}
  process.stdout.write(
    `${JSON.stringify({
      ok: false,
      error: String(e?.stack ?? e),
      url: page?.url() ?? null,
      html,
      screenshot: failureShot,
      console: consoleMessages,
      blocked,
      steps,
      duration_ms: Date.now() - t0,
    })}\n`,
  );
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(exitCode);
