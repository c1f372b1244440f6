<?php

declare(strict_types=1);

/*
 * Test application for tests/php: an ordinary PHP page using $_SESSION.
 * The handler comes from auto_prepend_file=php_handler/prepend.php (env vars
 * only), exactly as a legacy application would adopt it.
 * Every answer is JSON; "started" is session_start()'s result.
 */
header('Content-Type: application/json');
$op = $_GET['op'] ?? 'incr';
$sleepMs = (int) ($_GET['sleep_ms'] ?? 0);
$out = ['op' => $op];
// mark=<file>: created once the session is started (the lock is held), so a test
// can start a competing request at the right moment instead of guessing with sleeps.
$mark = static function (): void {
    if (isset($_GET['mark'])) {
        touch((string) $_GET['mark']);
    }
};

switch ($op) {
    case 'incr': // read-modify-write, holding the session for sleep_ms
        $out['started'] = session_start();
        $mark();
        if ($out['started']) {
            $n = $_SESSION['n'] ?? 0;
            if ($sleepMs > 0) {
                usleep($sleepMs * 1000);
            }
            $_SESSION['n'] = $n + 1;
            $out['n'] = $_SESSION['n'];
        }
        break;

    case 'get': // read only, lock released at once
        $out['started'] = session_start(['read_and_close' => true]);
        $out['session'] = $_SESSION ?? null;
        $out['status'] = session_status();
        break;

    case 'touch': // read, change nothing (lazy_write: updateTimestamp)
        $out['started'] = session_start();
        $out['n'] = $_SESSION['n'] ?? null;
        break;

    case 'hold_readonly': // read_and_close, then keep working for sleep_ms
        $out['started'] = session_start(['read_and_close' => true]);
        $out['n'] = $_SESSION['n'] ?? null;
        $mark();
        usleep($sleepMs * 1000);
        break;

    case 'set_blob': // binary-safe payload from the request body
        $out['started'] = session_start();
        if ($out['started']) {
            $blob = (string) file_get_contents('php://input');
            $_SESSION['blob'] = $blob;
            $out['sha256'] = hash('sha256', $blob);
            $out['written'] = session_write_close();
            // written is true even when the handler's write failed (PHP 8.2): ask it
            $out['error'] = SessionService\Handler::registered()?->lastError();
        }
        break;

    case 'get_blob':
        $out['started'] = session_start(['read_and_close' => true]);
        $blob = $_SESSION['blob'] ?? '';
        $out['sha256'] = hash('sha256', $blob);
        $out['len'] = strlen($blob);
        $out['n'] = $_SESSION['n'] ?? null;
        break;

    case 'regenerate':
        $out['started'] = session_start();
        $out['old_id'] = session_id();
        $out['regenerated'] = session_regenerate_id(true);
        $out['new_id'] = session_id();
        $_SESSION['regenerated'] = true;
        break;

    case 'destroy':
        $out['started'] = session_start();
        $out['destroyed'] = session_destroy();
        break;

    case 'fatal': // a fatal error while the lock is held
        session_start();
        $_SESSION['before_fatal'] = true;
        $f = 'undefined_function_'.mt_rand();
        $f();
        break;

    case 'id': // start a session, store nothing
        $out['started'] = session_start();
        break;

    case 'reset': // change, then session_reset() back to the stored data (lock still held)
        $out['started'] = session_start();
        $_SESSION['n'] = 1000;
        $out['reset'] = session_reset();
        $out['n'] = $_SESSION['n'] ?? null;
        $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
        break;

    case 'regenerate_keep': // session_regenerate_id(false): the old session keeps its data
        $out['started'] = session_start();
        $out['old_id'] = session_id();
        $out['regenerated'] = session_regenerate_id(false);
        $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
        break;

    case 'twice': // two sessions in one PHP request, so one curl handle: write, then read again
        $out['started'] = session_start();
        $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
        session_write_close();
        $out['again'] = session_start(['read_and_close' => true]);
        $out['n'] = $_SESSION['n'] ?? null;
        break;

    default:
        http_response_code(404);
}
$out['id'] = session_id();
echo json_encode($out);
