<?php

declare(strict_types=1);

/*
 * The example shop: plain PHP, no framework, ordinary $_SESSION.
 *
 * Nothing here knows about the session service: the handler is registered by
 * auto_prepend_file=php_handler/prepend.php (php.ini or `php -d`), configured by
 * SESSION_SERVICE_* environment variables. Without it, the shop still runs on
 * PHP's files handler, it just loses the cart when the next request lands on
 * another node.
 *
 * Every page names the node that served it in the X-Served-By header (NODE_NAME,
 * else the host name) and in its footer, with the session id. With ?format=json
 * a page answers with the session's state as JSON instead of HTML (used by the
 * demo walk and the load test).
 */

const CATALOG = [
    'apple' => ['Apple', 40],
    'bread' => ['Bread', 250],
    'cheese' => ['Cheese', 620],
    'coffee' => ['Coffee', 890],
    'pear' => ['Pear', 55],
];

function node_name(): string
{
    $name = getenv('NODE_NAME');

    return false !== $name && '' !== $name ? $name : (string) gethostname();
}

function wants_json(): bool
{
    return 'json' === ($_GET['format'] ?? '');
}

/** Starts the session (the service's lock is held until the request ends) and counts the view. */
function shop_start(): void
{
    header('X-Served-By: '.node_name());
    header('Cache-Control: no-store');
    if (!session_start()) {
        http_response_code(503);
        header('Content-Type: text/plain; charset=utf-8');
        echo "session storage unavailable\n";
        exit;
    }
    $_SESSION['views'] = (int) ($_SESSION['views'] ?? 0) + 1;
    $_SESSION['cart'] ??= [];
    $_SESSION['counter'] ??= 0;
}

function cart_count(): int
{
    return (int) array_sum($_SESSION['cart'] ?? []);
}

/** @return array<string, mixed> */
function shop_state(): array
{
    return [
        'node' => node_name(),
        'session_id' => session_id(),
        'user' => $_SESSION['user'] ?? null,
        'cart' => (object) ($_SESSION['cart'] ?? []),
        'cart_count' => cart_count(),
        'counter' => (int) ($_SESSION['counter'] ?? 0),
        'views' => (int) ($_SESSION['views'] ?? 0),
    ];
}

function h(string $text): string
{
    return htmlspecialchars($text, ENT_QUOTES | ENT_SUBSTITUTE, 'UTF-8');
}

function price(int $cents): string
{
    return sprintf('%d.%02d €', intdiv($cents, 100), $cents % 100);
}

/**
 * session_write_close(), and whether a change was saved. PHP 8.2 reports a failed
 * save as success (with a warning); the session service's handler, when it is the
 * one registered, knows better. A GET only extends the expiry: it is not checked.
 */
function shop_save(): bool
{
    session_write_close();
    if ('POST' !== ($_SERVER['REQUEST_METHOD'] ?? 'GET')
        || !class_exists(\SessionService\Handler::class, false)) {
        return true;
    }

    return null === \SessionService\Handler::registered()?->lastError();
}

function not_saved(): never
{
    http_response_code(503);
    header('Retry-After: 1');
    header('Content-Type: text/plain; charset=utf-8');
    echo "your change was not saved (session storage failed); please try again\n";
    exit;
}

/** After a POST: JSON state, or a 303 to $location (post/redirect/get). */
function done(string $location): never
{
    if (wants_json()) {
        send_json();
    }
    if (!shop_save()) {
        not_saved();
    }
    header('Location: '.$location, true, 303);
    exit;
}

function send_json(int $status = 200): never
{
    $state = shop_state();
    if (!shop_save()) {
        not_saved();
    }
    http_response_code($status);
    header('Content-Type: application/json');
    echo json_encode($state, JSON_THROW_ON_ERROR), "\n";
    exit;
}

function render(string $title, string $body): never
{
    if (wants_json()) {
        send_json();
    }
    $state = shop_state();
    if (!shop_save()) {
        not_saved();
    }
    header('Content-Type: text/html; charset=utf-8');
    $user = $state['user'];
    $who = null === $user
        ? '<a href="/shop/index.php#login">log in</a>'
        : 'logged in as <strong id="user">'.h((string) $user).'</strong> · <form class="inline" method="post" action="/shop/logout.php"><button id="logout">log out</button></form>';
    $sid = (string) $state['session_id'];
    echo '<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>', h($title), ' · example shop</title>
<style>
body{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem;color:#222}
nav a{margin-right:1rem} table{border-collapse:collapse} td,th{padding:.3rem .8rem;text-align:left}
.inline{display:inline} footer{margin-top:3rem;padding-top:.5rem;border-top:1px solid #ccc;color:#555;font-size:.9rem}
footer code{background:#f3f3f3;padding:0 .3rem}
</style></head><body>
<nav><a href="/shop/index.php">Shop</a><a href="/shop/cart.php">Cart (<span id="cart-count">', $state['cart_count'], '</span>)</a><a href="/shop/counter.php">Counter</a><a href="/symfony/">Symfony example</a> <span>', $who, '</span></nav>
<h1>', h($title), '</h1>
', $body, '
<footer>served by <strong id="node">', h((string) $state['node']), '</strong> · session <code id="sid" title="', h($sid), '">', h(substr($sid, 0, 8)), '…</code> · <span id="views">', $state['views'], '</span> page views in this session</footer>
</body></html>
';
    exit;
}
