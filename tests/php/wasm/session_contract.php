<?php

declare(strict_types=1);

/*
 * PHP's session contract with the handler registered, through PHP's own session
 * functions, on whatever PHP runs this: tests/php/test_php_versions.py runs it on
 * PHP 8.1 and 8.5 through php-wasm and on the native PHP. Each "request" is one
 * session_start() ... session_write_close() with the id PHP would get from the
 * cookie. A second Handler, called directly with lock_wait_ms=0, stands for a
 * concurrent request on another node.
 *
 * Any warning, notice or deprecation is a failure, except the one warning PHP
 * gives for a session_start() that the handler makes fail on purpose. Prints one
 * JSON line: {"php": version, "checks": n, "failures": [...], "log": [...]}.
 * Needs SESSION_SERVICE_URL and SESSION_SERVICE_TOKEN.
 */

use SessionService\Handler;

error_reporting(E_ALL);
$failures = [];
$warnings = [];
set_error_handler(static function (int $level, string $message, string $file, int $line) use (&$warnings): bool {
    $warnings[] = sprintf('PHP error %d: %s at %s:%d', $level, $message, basename($file), $line);

    return true;
});
$log = tempnam(sys_get_temp_dir(), 'handler-log');
ini_set('error_log', $log);
foreach ([
    'session.use_strict_mode' => '1',
    'session.use_cookies' => '0',
    'session.lazy_write' => '1',
    'session.gc_probability' => '0',
    'session.gc_maxlifetime' => '1440',
] as $name => $value) {
    ini_set($name, $value);
}

require dirname(__DIR__, 3).'/php_handler/autoload.php';

$checks = 0;
$check = static function (bool $ok, string $what) use (&$checks, &$failures): void {
    ++$checks;
    if (!$ok) {
        $failures[] = $what;
    }
};
/** One request's session_start() with the id its cookie carries (null: none). */
$start = static function (?string $id, array $options = []): bool {
    if (null !== $id) {
        session_id($id);
    }

    return session_start($options);
};
/** What a concurrent request on another node gets for $id right now, without waiting. */
$peek = static function (string $id): string|false {
    $other = new Handler(['lock_wait_ms' => 0]);
    $other->open('', 'PHPSESSID');
    $other->validateId($id);
    $data = $other->read($id);
    $other->close();

    return $data;
};

try {
    $handler = Handler::register();
    $check($handler === Handler::registered() && 'user' === ini_get('session.save_handler'), 'register() installs the handler');

    // Strict mode: a forged id is replaced by a fresh one.
    $forged = 'forged'.bin2hex(random_bytes(16));
    $check($start($forged), 'session_start() with a forged id succeeds');
    $id = session_id();
    $check($id !== $forged && 1 === preg_match('/^[A-Za-z0-9,-]{22,256}$/D', $id), 'strict mode replaces a forged id');
    $check([] === $_SESSION, 'a new session is empty');
    $_SESSION['n'] = 1;

    // The lock is held from session_start() to session_write_close().
    $check(false === $peek($id), 'a concurrent request cannot read the session while it is locked');
    $check(session_write_close(), 'session_write_close() succeeds');
    $check(str_contains((string) $peek($id), 'n|i:1;'), 'after session_write_close() the data is stored and the lock free');

    // The next request sees it and changes it.
    $check($start($id), 'session_start() of a stored session succeeds');
    $check(1 === ($_SESSION['n'] ?? null), 'the next request reads what the last one wrote');
    $_SESSION['n'] = 2;
    $check(session_write_close(), 'the second write succeeds');

    // read_and_close releases the lock at once.
    $check($start($id, ['read_and_close' => true]), 'session_start(read_and_close) succeeds');
    $check(2 === ($_SESSION['n'] ?? null), 'read_and_close reads the data');
    $check(str_contains((string) $peek($id), 'n|i:2;'), 'read_and_close leaves no lock behind');

    // lazy_write: an unchanged session is only touched, and stays whole.
    $check($start($id), 'session_start() for an unchanged request succeeds');
    $check(session_write_close(), 'session_write_close() of an unchanged session succeeds');
    $check(str_contains((string) $peek($id), 'n|i:2;'), 'an unchanged session keeps its data');

    // Every byte value round-trips.
    $bytes = implode('', array_map('chr', range(0, 255)));
    $start($id);
    $_SESSION['bytes'] = $bytes;
    session_write_close();
    $start($id);
    $check($bytes === ($_SESSION['bytes'] ?? null), 'all 256 byte values round-trip');

    // session_regenerate_id(true): the old id is destroyed, the new one has the data.
    $check(session_regenerate_id(true), 'session_regenerate_id(true) succeeds');
    $new = session_id();
    $check($new !== $id, 'regenerate gives a new id');
    $check(session_write_close(), 'the regenerated session is written');
    $start($id);
    $check(session_id() !== $id && [] === $_SESSION, 'the old id is gone (strict mode gives a fresh, empty session)');
    session_write_close();
    $start($new);
    $check(2 === ($_SESSION['n'] ?? null) && $bytes === ($_SESSION['bytes'] ?? null), 'the new id carries the data');

    // session_destroy() removes it for every node.
    $check(session_destroy(), 'session_destroy() succeeds');
    $start($new);
    $check(session_id() !== $new && [] === $_SESSION, 'a destroyed session is gone');
    $check(0 === session_gc(), 'session_gc() reports 0 (the service collects)');
    session_write_close();

    // A mistyped option is refused with a message that names it.
    try {
        new Handler(['lock_wait' => 100]);
        $check(false, 'an unknown option is refused');
    } catch (InvalidArgumentException $e) {
        $check(str_contains($e->getMessage(), 'unknown option "lock_wait"'), 'an unknown option is named');
    }

    // Options from session.save_path (the environment sets only the URL and token
    // here, so these come from save_path), and a bad key named.
    $o = SessionService\Options::resolve([], 'http://a:1,http://b:2?lock=NONE&lock_wait_ms=7');
    $check('none' === $o->lock && 7 === $o->lockWaitMs, 'session.save_path options are read');
    try {
        SessionService\Options::resolve([], 'http://a:1?lock_wait=7');
        $check(false, 'an unknown session.save_path key is refused');
    } catch (InvalidArgumentException $e) {
        $check(str_contains($e->getMessage(), 'session.save_path: key "lock_wait" is not an option'), 'an unknown session.save_path key is named');
    }

    // The wire codec: JSON round trip of binary data; msgpack too where ext-msgpack is.
    $bytes = "\0\xff\x80 a|b:1;";
    [$doc, $format] = SessionService\Codec::decode((new SessionService\Codec(false))->encode(['data' => $bytes, 'ttl' => 5]), 'application/json');
    $check('json' === $format && $bytes === SessionService\Codec::data($doc['data'] ?? null, $format) && 5 === $doc['ttl'], 'JSON carries binary data');
    $packed = (new SessionService\Codec(true))->encode(['data' => $bytes, 'ttl' => -5, 'lock' => str_repeat('k', 40)]);
    $check(!function_exists('msgpack_unpack') || ['data' => $bytes, 'ttl' => -5, 'lock' => str_repeat('k', 40)] === SessionService\Codec::decode($packed, 'application/msgpack')[0], 'msgpack carries binary data');

    // The service unreachable, under the default "fail" policy: session_start() fails,
    // with a line in the log naming the URL (PHP itself warns about the failed read).
    Handler::register(['url' => 'http://127.0.0.1:9', 'connect_timeout_ms' => 500]);
    $before = count($warnings);
    $check(false === $start($new), 'session_start() fails when the service is unreachable');
    $expected = array_splice($warnings, $before);
    $check(1 === count($expected) && str_contains($expected[0], 'Failed to read session data'), 'PHP warns once about the failed read');
    $check(str_contains((string) file_get_contents($log), 'http://127.0.0.1:9'), 'the log names the unreachable URL');
} catch (Throwable $e) {
    $failures[] = get_class($e).': '.$e->getMessage().' at '.basename($e->getFile()).':'.$e->getLine();
}

$lines = array_values(array_filter(explode("\n", (string) file_get_contents($log))));
@unlink($log);
echo json_encode([
    'php' => PHP_VERSION,
    'checks' => $checks,
    'failures' => [...$failures, ...$warnings],
    'log' => $lines,
]), "\n";
