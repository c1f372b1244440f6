<?php

declare(strict_types=1);

require __DIR__.'/bootstrap.php';

shop_start();

if ('POST' === $_SERVER['REQUEST_METHOD']) {
    // Read-modify-write under the session lock: concurrent clicks never lose an increment.
    ++$_SESSION['counter'];
    done('/shop/counter.php');
}
render('Counter', '<p>The counter is at <strong id="counter">'.(int) $_SESSION['counter'].'</strong>.</p>'
    .'<form method="post" action="/shop/counter.php"><button id="increment">+1</button></form>');
