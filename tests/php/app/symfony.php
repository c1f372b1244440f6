<?php

declare(strict_types=1);

/*
 * Framework-level compatibility: Symfony HttpFoundation's NativeSessionStorage
 * (Debian's php-symfony-http-foundation) with SessionService\Handler as its
 * save handler. No auto_prepend_file on this node.
 */
require '/usr/share/php/Symfony/Component/HttpFoundation/autoload.php';
require dirname(__DIR__, 3).'/php_handler/autoload.php';

use SessionService\Handler;
use Symfony\Component\HttpFoundation\Request;
use Symfony\Component\HttpFoundation\Response;
use Symfony\Component\HttpFoundation\Session\Session;
use Symfony\Component\HttpFoundation\Session\Storage\NativeSessionStorage;

$request = Request::createFromGlobals();
$storage = new NativeSessionStorage(['use_strict_mode' => 1, 'gc_maxlifetime' => 600], new Handler());
$session = new Session($storage);
$request->setSession($session);

$op = $request->query->get('op', 'incr');
$data = ['op' => $op];
if ('incr' === $op) {
    $session->start();
    $session->set('n', $session->get('n', 0) + 1);
    $session->getFlashBag()->add('notice', 'incremented');
    $data['n'] = $session->get('n');
} elseif ('migrate' === $op) { // what Symfony does at login
    $session->start();
    $data['old_id'] = $session->getId();
    $data['migrated'] = $session->migrate(true);
    $data['new_id'] = $session->getId();
} elseif ('invalidate' === $op) { // what Symfony does at logout
    $session->start();
    $data['invalidated'] = $session->invalidate();
} elseif ('get' === $op) {
    $session->start();
    $data['n'] = $session->get('n');
    $data['flashes'] = $session->getFlashBag()->get('notice');
}
$session->save();
$data['id'] = $session->getId();

$response = new Response(json_encode($data), 200, ['Content-Type' => 'application/json']);
$response->prepare($request)->send();
