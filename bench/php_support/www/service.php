<?php

declare(strict_types=1);

// This project's handler through the session service (configured by SESSION_SERVICE_* env vars;
// ?lock=none for the contention run's unlocked variant).
require dirname(__DIR__, 3).'/php_handler/autoload.php';
SessionService\Handler::register('none' === ($_GET['lock'] ?? '') ? ['lock' => 'none'] : []);
require __DIR__.'/page.php';
