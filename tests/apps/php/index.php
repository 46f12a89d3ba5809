<?php
// A deliberately session-fixation-vulnerable legacy PHP app for sessiongate's end-to-end
// tests. Run as the router script of PHP's built-in server with
//   -d session.use_strict_mode=0  (adopts any client-chosen session id)
//   -d session.use_only_cookies=0 (also takes ?PHPSESSID=... from the URL, and POST bodies)
//   -d session.use_trans_sid=1
// It never calls session_regenerate_id(): the id from before the login stays the id after.

session_start(); // every request, so even an anonymous visitor gets a PHPSESSID

$USERS = ['alice' => 'wonderland', 'mallory' => 'evil'];
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
$method = $_SERVER['REQUEST_METHOD'];
$user = $_SESSION['user'] ?? null;

function text($status, $body) {
    http_response_code($status);
    header('Content-Type: text/plain; charset=utf-8');
    echo $body;
    exit;
}

function redirect($to) {
    http_response_code(302);
    header('Location: ' . $to);
    exit;
}

switch ("$method $path") {
case 'GET /':
    text(200, 'Hello, ' . ($user ?? 'anonymous') . "\n");
case 'GET /whoami':
    text(200, $user ?? 'anonymous');
case 'GET /sid':
    text(200, session_id() ?: '-');
case 'GET /cookies':
    header('Content-Type: application/json');
    echo json_encode((object) $_COOKIE); // the cookies as PHP parsed them
    exit;
case 'GET /login':
    header('Content-Type: text/html; charset=utf-8');
    echo '<!doctype html><title>Log in</title><form method="post" action="/login">'
        . '<input name="username"> <input name="password" type="password">'
        . ' <button>Log in</button></form>';
    exit;
case 'POST /login':
    $name = $_POST['username'] ?? '';
    $pass = $_POST['password'] ?? '';
    if (isset($USERS[$name]) && hash_equals($USERS[$name], $pass)) {
        $_SESSION['user'] = $name; // no session_regenerate_id(): the fixation flaw
        redirect('/account');
    }
    text(200, "Invalid credentials\n");
case 'GET /account':
    if ($user === null) {
        redirect('/login');
    }
    text(200, "Account of $user\n");
case 'POST /logout':
    $_SESSION = [];
    session_destroy();
    redirect('/');
default:
    text(404, "Not found\n");
}
