<?php

declare(strict_types=1);

/*
 * The second example: Symfony HttpFoundation's Session over the same handler.
 *
 * NativeSessionStorage is given a SessionService\Handler explicitly (Symfony sets
 * its own save handler, so the one registered by auto_prepend_file is replaced by
 * an identical one; the class comes from that prepend, or from php_handler/autoload.php).
 * Debian's php-symfony-http-foundation provides the autoloader below.
 */
require '/usr/share/php/Symfony/Component/HttpFoundation/autoload.php';
if (!class_exists(SessionService\Handler::class)) {
    require dirname(__DIR__, 2).'/php_handler/autoload.php';
}

use SessionService\Handler;
use Symfony\Component\HttpFoundation\RedirectResponse;
use Symfony\Component\HttpFoundation\Request;
use Symfony\Component\HttpFoundation\Response;
use Symfony\Component\HttpFoundation\Session\Session;
use Symfony\Component\HttpFoundation\Session\Storage\NativeSessionStorage;

$request = Request::createFromGlobals();
$storage = new NativeSessionStorage(
    ['use_strict_mode' => 1, 'cookie_httponly' => 1, 'cookie_samesite' => 'lax'],
    new Handler(),
);
$session = new Session($storage);
$request->setSession($session);
$session->start();

$node = getenv('NODE_NAME') ?: (string) gethostname();
if ($request->isMethod('POST')) {
    $session->set('clicks', (int) $session->get('clicks', 0) + 1);
    $session->getFlashBag()->add('notice', sprintf('click %d recorded by %s', $session->get('clicks'), $node));
    $response = 'json' === $request->query->get('format')
        ? new Response('', 204)
        : new RedirectResponse('/symfony/', 303);
} else {
    $flashes = $session->getFlashBag()->get('notice');
    $clicks = (int) $session->get('clicks', 0);
    if ('json' === $request->query->get('format')) {
        $response = new Response(json_encode(['node' => $node, 'session_id' => $session->getId(), 'clicks' => $clicks, 'flashes' => $flashes], JSON_THROW_ON_ERROR), 200, ['Content-Type' => 'application/json']);
    } else {
        $e = static fn (string $s): string => htmlspecialchars($s, ENT_QUOTES, 'UTF-8');
        $list = implode('', array_map(static fn (string $f): string => '<li class="flash">'.$e($f).'</li>', $flashes));
        $response = new Response('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Symfony session example</title></head>'
            .'<body style="font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto">'
            .'<p><a href="/shop/index.php">back to the shop</a></p><h1>Symfony HttpFoundation session</h1>'
            .'<ul>'.$list.'</ul><p>Clicks: <strong id="clicks">'.$clicks.'</strong></p>'
            .'<form method="post"><button id="click">click</button></form>'
            .'<footer style="margin-top:2rem;color:#555">served by <strong id="node">'.$e($node).'</strong> · session <code id="sid">'.$e(substr($session->getId(), 0, 8)).'…</code></footer></body></html>');
    }
}
$session->save();
$response->headers->set('X-Served-By', $node);
$response->headers->set('Cache-Control', 'no-store');
$response->prepare($request)->send();
