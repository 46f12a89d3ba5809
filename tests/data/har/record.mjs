// Records one HAR 1.2 fixture of a browser session against an app of tests/apps/, reached
// directly (no sessiongate in front): home page, login page, a login with a WRONG password,
// a login with the RIGHT one, the account page, logout. See README.md in this directory.
//
// Needs playwright-core (`npm install playwright-core` in any scratch directory, then run
// this file with NODE_PATH=<that dir>/node_modules, or copy it there) and a Chromium
// (Debian's /usr/bin/chromium by default; --chromium PATH for another one).
//
// Usage:
//   node record.mjs --base http://127.0.0.1:8000 --out php.har \
//     [--home /] [--login-page /login] [--login-path /login] \
//     [--user-field username] [--pass-field password] \
//     [--user alice] [--good-pass wonderland] [--bad-pass wrong-password] \
//     [--account /account] [--logout /logout]
//
// The login page is opened; if it holds no form with the two fields (an app whose login
// form lives elsewhere, or nowhere: tests/apps/flask_app.py only answers POST /login), an
// equivalent <form method=post action=LOGIN_PATH> is built into the page shown, so the
// browser still sends an ordinary same-origin form POST. None of the apps has a logout
// button: logout is a <form method=post action=LOGOUT> built into the account page and
// submitted, as a logout button would. Every submission waits for the resulting
// navigation (redirects included) to load.
import { parseArgs } from 'node:util';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const { values: o } = parseArgs({
  options: {
    base: { type: 'string' },
    out: { type: 'string' },
    home: { type: 'string', default: '/' },
    'login-page': { type: 'string' },
    'login-path': { type: 'string', default: '/login' },
    'user-field': { type: 'string', default: 'username' },
    'pass-field': { type: 'string', default: 'password' },
    user: { type: 'string', default: 'alice' },
    'good-pass': { type: 'string', default: 'wonderland' },
    'bad-pass': { type: 'string', default: 'wrong-password' },
    account: { type: 'string', default: '/account' },
    logout: { type: 'string', default: '/logout' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
  },
});
if (!o.base || !o.out) {
  console.error('usage: node record.mjs --base URL --out FILE.har [options] (see the header)');
  process.exit(2);
}
const base = o.base.replace(/\/$/, '');
const loginPage = o['login-page'] ?? o['login-path'];
const url = (p) => base + p;

const browser = await chromium.launch({
  executablePath: o.chromium,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const context = await browser.newContext({ recordHar: { path: o.out, content: 'embed' } });
const page = await context.newPage();

// Submits a form built into the current page, as a button in it would.
async function submitBuiltForm(action, fields) {
  await Promise.all([
    page.waitForNavigation({ waitUntil: 'load' }),
    page.evaluate(({ action, fields }) => {
      const f = document.createElement('form');
      f.method = 'post';
      f.action = action;
      for (const [name, value] of Object.entries(fields)) {
        const i = document.createElement('input');
        i.name = name;
        i.value = value;
        f.appendChild(i);
      }
      document.body.appendChild(f);
      f.submit();
    }, { action, fields }),
  ]);
}

async function logIn(password) {
  await page.goto(url(loginPage));
  const userInput = page.locator(`form input[name="${o['user-field']}"]`);
  const passInput = page.locator(`form input[name="${o['pass-field']}"]`);
  if ((await userInput.count()) === 1 && (await passInput.count()) === 1) {
    await userInput.fill(o.user);
    await passInput.fill(password);
    await Promise.all([
      page.waitForNavigation({ waitUntil: 'load' }),
      passInput.press('Enter'),
    ]);
  } else {
    console.error(`note: no login form at ${loginPage}; building one that posts to ${o['login-path']}`);
    await submitBuiltForm(o['login-path'], { [o['user-field']]: o.user, [o['pass-field']]: password });
  }
  console.error(`login with ${password === o['good-pass'] ? 'good' : 'bad'} password -> ${page.url()}`);
}

await page.goto(url(o.home));
await logIn(o['bad-pass']);
await logIn(o['good-pass']);
await page.goto(url(o.account));
console.error(`account page: ${(await page.textContent('body')).trim()}`);
await submitBuiltForm(o.logout, {});
console.error(`logout -> ${page.url()}`);

await context.close(); // writes the HAR
await browser.close();
