<?php

declare(strict_types=1);

require __DIR__.'/bootstrap.php';

shop_start();

if ('POST' === $_SERVER['REQUEST_METHOD']) {
    $user = trim((string) ($_POST['user'] ?? ''));
    if (!preg_match('/^.{1,40}$/Du', $user)) {
        http_response_code(422);
        render('Log in', '<p>Give a name of 1 to 40 characters.</p>');
    }
    // A new id at login (session fixation), as every framework does: the old id is destroyed.
    session_regenerate_id(true);
    $_SESSION['user'] = $user;
    done('/shop/index.php');
}
done('/shop/index.php#login');
