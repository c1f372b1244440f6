<?php

declare(strict_types=1);

// Symfony's PdoSessionHandler straight to MariaDB (the direct anchor).
// BENCH_PDO_LOCK: transactional (SELECT ... FOR UPDATE, the default) or none.
$dir = '/usr/share/php/Symfony/Component/HttpFoundation/Session/Storage/Handler/';
require_once $dir.'AbstractSessionHandler.php';
require_once $dir.'PdoSessionHandler.php';

use Symfony\Component\HttpFoundation\Session\Storage\Handler\PdoSessionHandler;

$handler = new PdoSessionHandler((string) getenv('BENCH_PDO_DSN'), [
    'db_username' => 'root',
    'db_password' => '',
    'lock_mode' => 'none' === ($_GET['lock'] ?? getenv('BENCH_PDO_LOCK')) ? PdoSessionHandler::LOCK_NONE : PdoSessionHandler::LOCK_TRANSACTIONAL,
]);
if ('create_table' === ($_GET['op'] ?? '')) {
    $handler->createTable();
    echo 'created';

    return;
}
session_set_save_handler($handler, true);
require __DIR__.'/page.php';
