<?php

declare(strict_types=1);

/*
 * The benchmark page, identical for every handler: a read-modify-write of a
 * small, realistic session. op=init starts a session (prints its id),
 * op=read prints the counter without locking for long (read_and_close),
 * anything else increments the counter. A failed session_start() is a 500.
 */
$op = $_GET['op'] ?? 'rmw';
$options = 'read' === $op ? ['read_and_close' => true] : [];
if (!session_start($options)) {
    http_response_code(500);
    echo "session_start failed\n";

    return;
}
if ('init' === $op) {
    $_SESSION['n'] = 0;
    $_SESSION['user'] = ['id' => random_int(1, 1_000_000), 'name' => 'bench user', 'roles' => ['ROLE_USER'], 'prefs' => str_repeat('p', 300)];
    echo session_id();
} elseif ('read' === $op) {
    echo (int) ($_SESSION['n'] ?? -1);
} else {
    $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
    $_SESSION['last'] = microtime(true);
    echo 'ok';
}
