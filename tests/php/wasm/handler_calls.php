<?php

declare(strict_types=1);

/*
 * The handler's calls, in the order PHP's session module makes them, against a real
 * session service, on whatever PHP runs this (tests/php/test_php_versions.py runs it
 * on PHP 8.1 and 8.5 through php-wasm). php-wasm cannot run session_start() into a
 * user handler that does network I/O, so this script plays the session module's
 * part itself; the full contract through session_start() runs on the native PHP.
 *
 * Any warning, notice or deprecation is a failure. Prints one JSON line:
 * {"php": version, "checks": n, "failures": [...], "log": [...]}.
 * Needs SESSION_SERVICE_URL and SESSION_SERVICE_TOKEN.
 */

use SessionService\Handler;

error_reporting(E_ALL);
$failures = [];
set_error_handler(static function (int $level, string $message, string $file, int $line) use (&$failures): bool {
    $failures[] = sprintf('PHP error %d: %s at %s:%d', $level, $message, basename($file), $line);

    return true;
});
$log = tempnam(sys_get_temp_dir(), 'handler-log');
ini_set('error_log', $log);
ini_set('session.use_strict_mode', '1');

require dirname(__DIR__, 3).'/php_handler/autoload.php';

$checks = 0;
$check = static function (bool $ok, string $what) use (&$checks, &$failures): void {
    ++$checks;
    if (!$ok) {
        $failures[] = $what;
    }
};
$newId = static fn (): string => bin2hex(random_bytes(16));

try {
    // A new session: strict mode refuses the forged id, PHP makes a fresh one.
    $node1 = new Handler();
    $check(true === $node1->open('', 'PHPSESSID'), 'open() is true');
    $check(false === $node1->validateId('forged'.$newId()), 'validateId() of an unknown id is false');
    $id = $newId();
    $check('' === $node1->read($id), 'read() of a new session is the empty string');
    $check(true === $node1->write($id, 'n|i:1;'), 'write() of a new session is true');
    $check(true === $node1->close(), 'close() is true');

    // The next request, on another node, holds the lock until close().
    $node2 = new Handler();
    $node2->open('', 'PHPSESSID');
    $check(true === $node2->validateId($id), 'validateId() of a stored session is true');
    $check('n|i:1;' === $node2->read($id), 'read() returns what was written');

    // A concurrent request that will not wait: read() fails, with a line in the log.
    $impatient = new Handler(['lock_wait_ms' => 0]);
    $impatient->open('', 'PHPSESSID');
    $impatient->validateId($id);
    $check(false === $impatient->read($id), 'read() of a locked session fails after lock_wait_ms');
    $impatient->close();
    $check(str_contains((string) file_get_contents($log), 'lock not obtained within 0 ms'), 'the lock timeout is logged');

    // Unchanged data (session.lazy_write): updateTimestamp() instead of write().
    $check(true === $node2->updateTimestamp($id, 'n|i:1;'), 'updateTimestamp() is true');
    $check(true === $node2->close(), 'close() after updateTimestamp() is true');

    // Every byte value, both ways.
    $bytes = implode('', array_map('chr', range(0, 255)));
    $node1->open('', 'PHPSESSID');
    $node1->validateId($id);
    $node1->read($id);
    $check(true === $node1->write($id, $bytes), 'write() of all 256 byte values is true');
    $node1->close();
    $node2->open('', 'PHPSESSID');
    $node2->validateId($id);
    $check($bytes === $node2->read($id), 'all 256 byte values round-trip');

    // session_destroy(): gone for every node.
    $check(true === $node2->destroy($id), 'destroy() is true');
    $node2->close();
    $node1->open('', 'PHPSESSID');
    $check(false === $node1->validateId($id), 'a destroyed session is unknown');
    $node1->close();

    // gc is the service's job; unknown options are refused with a clear message.
    $check(0 === $node1->gc(1440), 'gc() reports 0');
    try {
        new Handler(['no_such_option' => 1]);
        $check(false, 'an unknown option is refused');
    } catch (InvalidArgumentException $e) {
        $check(str_contains($e->getMessage(), 'unknown option "no_such_option"'), 'an unknown option is named');
    }

    // register() installs it as PHP's save handler.
    $registered = Handler::register();
    $check($registered instanceof Handler && Handler::registered() === $registered, 'register() returns the registered handler');
    $check('user' === ini_get('session.save_handler'), 'register() makes it the save handler');
} catch (Throwable $e) {
    $failures[] = get_class($e).': '.$e->getMessage().' at '.basename($e->getFile()).':'.$e->getLine();
}

$lines = array_values(array_filter(explode("\n", (string) file_get_contents($log))));
@unlink($log);
echo json_encode(['php' => PHP_VERSION, 'checks' => $checks, 'failures' => $failures, 'log' => $lines]), "\n";
