<?php

declare(strict_types=1);

require __DIR__.'/bootstrap.php';

shop_start();

if ('POST' === $_SERVER['REQUEST_METHOD']) {
    $_SESSION = [];
    session_destroy();
    // A fresh, empty session (new id, new cookie) for the next requests.
    session_id(session_create_id());
    session_start();
    $_SESSION['views'] = 1;
}
done('/shop/index.php');
