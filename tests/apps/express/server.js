// A deliberately session-fixation-vulnerable Express 5 app for sessiongate's end-to-end tests.
//
// express-session with its MemoryStore, cookie connect.sid (signed with a fixed secret) and
// saveUninitialized: true, so every visitor, an attacker too, is handed a valid signed id.
// express-session does not adopt an id the store does not know (it issues a fresh one), so
// the attacker harvests one with a first visit and plants it in the victim's browser. Login
// never calls req.session.regenerate(): the id from before the login stays the id after.
//
// Usage: node server.js PORT   (binds 127.0.0.1; needs `npm ci` in this directory)

const express = require('express');
const session = require('express-session');
const cookieParser = require('cookie-parser');

const USERS = { alice: 'wonderland', mallory: 'evil' };
const app = express(); // default routing: case-insensitive, non-strict trailing slash

app.use(cookieParser());
app.use(session({
  secret: 'sessiongate-e2e-not-a-secret',
  resave: false,
  saveUninitialized: true, // the harvesting half of the flaw
  cookie: { httpOnly: true, path: '/' },
}));
app.use(express.urlencoded({ extended: false }));

const text = (res, body, status = 200) => res.status(status).type('text/plain; charset=utf-8').send(body);
const user = (req) => req.session.user;

app.get('/', (req, res) => text(res, `Hello, ${user(req) || 'anonymous'}\n`));
app.get('/whoami', (req, res) => text(res, user(req) || 'anonymous'));
app.get('/sid', (req, res) => text(res, req.sessionID || '-'));
app.get('/cookies', (req, res) => res.json(req.cookies || {}));

app.get('/login', (req, res) => res.type('html').send(
  '<!doctype html><title>Log in</title><form method="post" action="/login">'
  + '<input name="username"> <input name="password" type="password">'
  + ' <button>Log in</button></form>'));

app.post('/login', (req, res) => {
  const { username = '', password = '' } = req.body || {};
  if (Object.hasOwn(USERS, username) && USERS[username] === password) {
    req.session.user = username; // no req.session.regenerate(): the fixation flaw
    return res.redirect(302, '/account');
  }
  text(res, 'Invalid credentials\n');
});

app.post('/logout', (req, res) => {
  req.session.destroy(() => res.redirect(302, '/'));
});

app.get('/account', (req, res) => {
  if (!user(req)) return text(res, 'Not logged in\n', 401);
  text(res, `Account of ${user(req)}\n`);
});

app.use((req, res) => text(res, 'Not found\n', 404));

app.listen(Number(process.argv[2]), '127.0.0.1');
