<?php

declare(strict_types=1);

/*
 * The fault runs' endpoint (loadtests/chaos.py): one read-modify-write increment
 * of $_SESSION['n'] under the session lock per POST, and an answer that never
 * claims more than what was stored:
 *
 *   POST /chaos.php  200 {"n": N, "sid": ...}      the increment is stored, the counter is N
 *                    503 {"error": "session_unavailable", "stage": "start", ...}
 *                        session_start() failed: nothing was changed
 *                    503 {"error": "session_not_saved", "stage": "write", ...}
 *                        the session's write failed: the increment may or may not be stored
 *   GET  /chaos.php  200 {"n": N, "sid": ...}      read only (read_and_close), no change
 *
 * It is a POST on purpose: a read-modify-write is not idempotent, and the balancer
 * replays idempotent methods (GET, PUT, ...) on another node when a node dies mid-request.
 * Like the shop, it knows nothing about the service (auto_prepend_file registers it).
 */

header('X-Served-By: '.(getenv('NODE_NAME') ?: (string) gethostname()));
header('Cache-Control: no-store');

/** @param array<string, mixed> $body */
function chaos_answer(int $status, array $body): never
{
    http_response_code($status);
    header('Content-Type: application/json');
    echo json_encode($body, JSON_THROW_ON_ERROR), "\n";
    exit;
}

$readOnly = 'POST' !== $_SERVER['REQUEST_METHOD'];
if (!session_start($readOnly ? ['read_and_close' => true] : [])) {
    chaos_answer(503, [
        'error' => 'session_unavailable',
        'stage' => 'start',
        'detail' => 'session_start() failed: the session was not read and nothing was changed',
    ]);
}
$n = (int) ($_SESSION['n'] ?? 0);
if ($readOnly) {
    chaos_answer(200, ['n' => $n, 'sid' => session_id()]);
}
$_SESSION['n'] = ++$n;
$sid = session_id();
// session_write_close() returns true even when the save handler's write failed (PHP 8.2:
// it only reports whether a session was active); the failure shows as PHP's warning
// "Failed to write session data", so that is what tells a stored increment from a lost one.
error_clear_last();
$closed = session_write_close();
$error = error_get_last();
if (!$closed || (null !== $error && str_contains($error['message'], 'Failed to write session data'))) {
    chaos_answer(503, [
        'error' => 'session_not_saved',
        'stage' => 'write',
        'detail' => 'the session write failed: the increment may or may not be stored',
    ]);
}
chaos_answer(200, ['n' => $n, 'sid' => $sid]);
