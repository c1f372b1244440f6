<?php

declare(strict_types=1);

namespace SessionService;

/**
 * PHP session save handler that keeps $_SESSION in the session service
 * (docs/api.md), so any number of stateless web nodes share sessions.
 *
 * It follows PHP's own session contract as the files handler does:
 *  - exclusive lock from session_start() to session_write_close() (or the end
 *    of the request, including after a fatal error; the lease covers a crash);
 *  - read() of a new session returns '' (false only for a real failure);
 *  - validateId() for session.use_strict_mode (it takes the lock and reads,
 *    and read() then reuses that result, so strict mode costs no extra call);
 *  - updateTimestamp() for session.lazy_write (touch instead of write);
 *  - destroy() for session_destroy() and session_regenerate_id(true);
 *  - session.gc_maxlifetime is the ttl of every write; gc() is left to the
 *    service and reports 0.
 *
 * Every failure returns false and writes one specific line to the error log
 * naming the URL, the HTTP status and the service's error/detail. The raw
 * session id is never logged, only a short SHA-256 prefix.
 */
final class Handler implements \SessionHandlerInterface, \SessionUpdateTimestampHandlerInterface
{
    public const LOCK_EXCLUSIVE = 'exclusive';
    public const LOCK_NONE = 'none';
    public const ON_UNAVAILABLE_FAIL = 'fail';
    public const ON_UNAVAILABLE_EMPTY = 'empty';
    public const ON_LOCK_TIMEOUT_FAIL = 'fail';
    public const ON_LOCK_TIMEOUT_READONLY = 'readonly';

    /** option name => [environment variable, default] */
    public const OPTIONS = [
        'url' => ['SESSION_SERVICE_URL', 'http://127.0.0.1:7070'],
        'token' => ['SESSION_SERVICE_TOKEN', ''],
        'token_file' => ['SESSION_SERVICE_TOKEN_FILE', ''],
        'connect_timeout_ms' => ['SESSION_SERVICE_CONNECT_TIMEOUT_MS', 1000],
        'timeout_ms' => ['SESSION_SERVICE_TIMEOUT_MS', 5000],
        'lock' => ['SESSION_SERVICE_LOCK', self::LOCK_EXCLUSIVE],
        'lock_wait_ms' => ['SESSION_SERVICE_LOCK_WAIT_MS', 5000],
        'lock_lease_ms' => ['SESSION_SERVICE_LOCK_LEASE_MS', 30000],
        'on_unavailable' => ['SESSION_SERVICE_ON_UNAVAILABLE', self::ON_UNAVAILABLE_FAIL],
        'on_lock_timeout' => ['SESSION_SERVICE_ON_LOCK_TIMEOUT', self::ON_LOCK_TIMEOUT_FAIL],
        'format' => ['SESSION_SERVICE_FORMAT', 'auto'],
        'ca_file' => ['SESSION_SERVICE_CA_FILE', ''],
        'ca_path' => ['SESSION_SERVICE_CA_PATH', ''],
    ];

    /** curl errors of the TLS layer (handshake, certificate, CA file). */
    private const TLS_ERRORS = [35, 51, 53, 54, 58, 59, 60, 64, 66, 77, 80, 82, 83, 90, 91];

    private const SID_PATTERN = '/^[A-Za-z0-9,-]{22,256}$/D';
    /**
     * The largest answer read: the service's largest session (16 MiB at most) in
     * base64 JSON, with room to spare. Something else on the service's port that
     * announces more is refused before its body is read, instead of filling PHP's
     * memory_limit and ending the request with a fatal error.
     */
    private const MAX_ANSWER_BYTES = 64 * 1024 * 1024;

    // The options, at their defaults until the constructor sees them set.
    /** @var non-empty-list<string> */
    private array $urls = [self::OPTIONS['url'][1]];
    private string $token = self::OPTIONS['token'][1];
    private int $connectTimeoutMs = self::OPTIONS['connect_timeout_ms'][1];
    private int $timeoutMs = self::OPTIONS['timeout_ms'][1];
    private string $lockMode = self::OPTIONS['lock'][1];
    private int $lockWaitMs = self::OPTIONS['lock_wait_ms'][1];
    private int $lockLeaseMs = self::OPTIONS['lock_lease_ms'][1];
    private string $onUnavailable = self::OPTIONS['on_unavailable'][1];
    private string $onLockTimeout = self::OPTIONS['on_lock_timeout'][1];
    private bool $msgpack = false;
    private string $caFile = self::OPTIONS['ca_file'][1];
    private string $caPath = self::OPTIONS['ca_path'][1];

    /** The one curl handle of this request (keep-alive between lock and write). */
    private ?\CurlHandle $curl = null;
    /** @var list<string> request headers of a call without a body (made with $curl) */
    private array $headersWithoutBody = [];
    /** @var list<string> request headers of a call with a body */
    private array $headersWithBody = [];
    /** Which header list $curl has: with a body (true), without (false), none yet (null). */
    private ?bool $headersSet = null;
    /** Index in $urls of the service currently used (moves on when one is unreachable). */
    private int $urlIndex = 0;

    // State of the session being handled. It follows the id: it is (re)set by
    // read()/validateId() and checked against the id given to write(),
    // updateTimestamp(), destroy() (PHP calls destroy(old) then read(new) in
    // session_regenerate_id(true)).
    private ?string $sid = null;
    /** Fencing token of the lock held on $sid, if any. */
    private ?string $lock = null;
    /** $sid did not exist when it was read. */
    private bool $isNew = false;
    /** The lock of $sid was not obtained: the data is served read-only. */
    private bool $readOnly = false;
    /** The service was unavailable under on_unavailable=empty: never write until close(). */
    private bool $degraded = false;

    /** Result of validateId()'s lock-and-read, handed to the read() that follows. */
    private ?string $prefetchId = null;
    private string|false $prefetchData = false;

    /** What went wrong with the service since session_start(), as logged (see lastError()). */
    private ?string $lastError = null;

    /** The handler register() installed last, for applications that did not keep it. */
    private static ?self $registered = null;

    /**
     * @param array<string, mixed> $options see self::OPTIONS; each falls back to its
     *                                      environment variable, then to its key in
     *                                      session.save_path, then to its default
     */
    public function __construct(array $options = [])
    {
        foreach ($options as $name => $_) {
            if (!isset(self::OPTIONS[$name])) {
                throw new \InvalidArgumentException(sprintf('session-service: unknown option "%s"', $name));
            }
        }
        // This runs on every PHP request (prepend.php). The properties start at the
        // defaults, which are valid, so only an option that is given, set in the
        // environment or in session.save_path is parsed and validated (the usual
        // setup: url and token).
        $fromIni = self::savePathOptions((string) \ini_get('session.save_path'));
        $format = 'auto';
        $tokenFile = '';
        /** @var array<string, int> $from where each option set came from: 0 code, 1 environment, 2 save_path */
        $from = [];
        foreach (self::OPTIONS as $name => [$env]) {
            if (isset($options[$name])) {
                $value = $options[$name];
                $from[$name] = 0;
            } elseif (false !== ($value = getenv($env)) && '' !== $value) {
                $from[$name] = 1; // an empty variable counts as unset
            } elseif (isset($fromIni[$name])) {
                $value = $fromIni[$name];
                $from[$name] = 2;
            } else {
                continue;
            }
            try {
                match ($name) {
                    'url' => $this->urls = self::urlList($value),
                    'token' => $this->token = self::tokenValue((string) $value),
                    'token_file' => $tokenFile = trim((string) $value),
                    'connect_timeout_ms' => $this->connectTimeoutMs = self::intOption($name, $value, 1),
                    'timeout_ms' => $this->timeoutMs = self::intOption($name, $value, 1),
                    'lock' => $this->lockMode = self::choice($name, $value, [self::LOCK_EXCLUSIVE, self::LOCK_NONE]),
                    'lock_wait_ms' => $this->lockWaitMs = self::intOption($name, $value, 0),
                    'lock_lease_ms' => $this->lockLeaseMs = self::intOption($name, $value, 100),
                    'on_unavailable' => $this->onUnavailable = self::choice($name, $value, [self::ON_UNAVAILABLE_FAIL, self::ON_UNAVAILABLE_EMPTY]),
                    'on_lock_timeout' => $this->onLockTimeout = self::choice($name, $value, [self::ON_LOCK_TIMEOUT_FAIL, self::ON_LOCK_TIMEOUT_READONLY]),
                    'format' => $format = self::choice($name, $value, ['auto', 'msgpack', 'json']),
                    'ca_file' => $this->caFile = self::readableFile($name, (string) $value),
                    'ca_path' => $this->caPath = self::directory($name, (string) $value),
                };
                if ('' !== $tokenFile && 'token_file' === $name) {
                    if (isset($from['token']) && $from['token'] === $from['token_file']) {
                        throw new \InvalidArgumentException('session-service: give "token" or "token_file", not both');
                    }
                    if (!isset($from['token']) || $from['token_file'] < $from['token']) {
                        $this->token = self::tokenFromFile($tokenFile);
                    }
                }
            } catch (\InvalidArgumentException $e) { // the same message, naming where the value came from
                if (0 === $from[$name]) {
                    throw $e; // given in code: the caller knows where
                }
                throw new \InvalidArgumentException(sprintf('%s (%s)', $e->getMessage(), 1 === $from[$name] ? 'environment variable '.$env : 'session.save_path'));
            }
        }
        if ('msgpack' === $format && !\function_exists('msgpack_unpack')) {
            throw new \InvalidArgumentException('session-service: format "msgpack" needs ext-msgpack');
        }
        $this->msgpack = 'json' !== $format && \function_exists('msgpack_unpack');
    }

    /**
     * Creates a handler and registers it with session_set_save_handler(..., true).
     *
     * @param array<string, mixed> $options
     */
    public static function register(array $options = []): self
    {
        $handler = new self($options);
        if (!session_set_save_handler($handler, true)) {
            throw new \RuntimeException('session-service: session_set_save_handler() failed (is a session already active?)');
        }
        self::$registered = $handler;

        return $handler;
    }

    /** The handler that register() installed (also through prepend.php), or null. */
    public static function registered(): ?self
    {
        return self::$registered;
    }

    /**
     * The last failure of this session's service calls since session_start(), as it
     * was logged (without the session id), or null when all went well.
     *
     * session_write_close() returns true even when the handler's write failed (PHP
     * 8.2), so an application that must know its changes were saved asks here after it.
     */
    public function lastError(): ?string
    {
        return $this->lastError;
    }

    public function open(string $path, string $name): bool
    {
        $this->lastError = null;

        return true;
    }

    public function close(): bool
    {
        $this->prefetchId = null;
        $this->prefetchData = false;
        if (null !== $this->sid && null !== $this->lock) {
            $this->release($this->sid, $this->lock);
        }
        $this->resetState(null);
        $this->degraded = false; // the next session_start() asks the service again

        return true;
    }

    public function validateId(string $id): bool
    {
        if (!preg_match(self::SID_PATTERN, $id)) {
            return false; // the service would refuse it; PHP makes a fresh id
        }
        if ($this->sid === $id && null !== $this->lock) {
            return true; // we hold its lock (session_reset()): it exists, as a files handler's file does
        }
        $data = $this->acquire($id);
        if (false === $data || $this->readOnly || $this->degraded) {
            // Failure: keep the id so that read() reports the failure (or, under
            // on_unavailable=empty, so that the stored session is still reachable later).
            $this->prefetchId = $id;
            $this->prefetchData = $data;

            return true;
        }
        if ($this->isNew) {
            // Unknown id (forged, or expired): let go of it, PHP makes a fresh one.
            if (null !== $this->lock) {
                $this->release($id, $this->lock);
            }
            $this->resetState(null);

            return false;
        }
        $this->prefetchId = $id;
        $this->prefetchData = $data;

        return true;
    }

    public function read(string $id): string|false
    {
        if (null !== $this->prefetchId) {
            $prefetchId = $this->prefetchId;
            $data = $this->prefetchData;
            $this->prefetchId = null;
            $this->prefetchData = false;
            if ($prefetchId === $id) {
                return $data;
            }
        }
        if (null !== $this->sid && $this->sid !== $id && null !== $this->lock) {
            $this->release($this->sid, $this->lock);
        }

        return $this->acquire($id);
    }

    public function write(string $id, string $data): bool
    {
        if ($this->degraded) {
            return true; // on_unavailable=empty: never overwrite the stored session (logged at read)
        }
        $mine = $this->sid === $id;
        if ($mine && $this->readOnly) {
            $this->fail($id, 'the lock was not obtained, so the changes of this request are discarded (session served read-only)');
            $this->resetState(null);

            return true;
        }

        return $this->put($id, $data);
    }

    public function updateTimestamp(string $id, string $data): bool
    {
        if ($this->degraded) {
            return true;
        }
        $mine = $this->sid === $id;
        if ($mine && $this->readOnly) {
            $this->resetState(null); // nothing changed, nothing to discard

            return true;
        }
        $lock = $mine ? $this->lock : null;
        $body = ['ttl' => $this->ttl()];
        if (null !== $lock) {
            $body['lock'] = $lock;
        }
        $r = $this->request('POST', $this->sessionPath($id).'/touch', $body);
        if (200 === $r['status'] && !self::isWriteResult($r)) {
            self::invalid($r, 'its body has no integer "version"');
            $this->logFailure('touch', $id, $r, '; whether the expiry was extended is unknown');

            return false; // a lock still held is released by close()
        }
        if (200 === $r['status']) {
            if ($mine) {
                $this->lock = null;
            }

            return true;
        }
        if (404 === $r['status']) {
            // Expired (or destroyed) meanwhile: a touch never revives it, so write the data.
            return $this->put($id, $data);
        }
        if ($mine && (409 === $r['status'] || 0 === $r['status'])) {
            $this->lock = null; // as in put()
        }
        $this->logFailure('touch', $id, $r, 0 === $r['status'] && self::wentOut($r) ? '; whether the expiry was extended is unknown' : '');

        return false;
    }

    public function destroy(string $id): bool
    {
        $r = $this->request('DELETE', $this->sessionPath($id), null);
        if (204 === $r['status'] || 200 === $r['status'] || 404 === $r['status']) {
            if ($this->sid === $id) {
                // The service dropped the lock along with the session.
                $this->resetState(null);
            }

            return true;
        }
        $this->logFailure('destroy', $id, $r);

        return false;
    }

    public function gc(int $max_lifetime): int|false
    {
        return 0; // the service collects expired sessions itself
    }

    public function __destruct()
    {
        // Last resort if PHP never called close() (it does, also after a fatal error).
        if (null !== $this->sid && null !== $this->lock) {
            $this->release($this->sid, $this->lock);
            $this->lock = null;
        }
    }

    // ------------------------------------------------------------------ internals

    /** Lock (exclusive mode) or plain read (none mode) of $id; sets the state to $id. */
    private function acquire(string $id): string|false
    {
        if ($this->sid === $id && null !== $this->lock) {
            // Read again under the lock we already hold (session_reset()): locking
            // again would wait for ourselves.
            $lock = $this->lock;
            $data = $this->plainRead($id, 'read');
            $this->lock = $lock;

            return $data;
        }
        $this->resetState($id);
        if (!preg_match(self::SID_PATTERN, $id)) {
            $this->fail($id, 'session id refused: it must be 22 to 256 characters of [A-Za-z0-9,-] (enable session.use_strict_mode so PHP replaces such ids)');

            return false;
        }
        if (self::LOCK_NONE === $this->lockMode) {
            return $this->plainRead($id, 'read');
        }
        $query = sprintf('/lock?wait_ms=%d&lease_ms=%d', $this->lockWaitMs, $this->lockLeaseMs);
        $r = $this->request('POST', $this->sessionPath($id).$query, null, $this->lockWaitMs);
        if (200 === $r['status'] && \is_array($r['body']) && \is_string($r['body']['lock'] ?? null)) {
            $data = $this->decodeData($r['body']['data'] ?? null, $r['format']);
            if (false === $data) {
                // Never start the request with a session it could not read: its write
                // would overwrite the stored data. Let the lock go at once.
                $this->release($id, $r['body']['lock']);
                self::invalid($r, self::dataProblem($r));
                $this->logFailure('lock', $id, $r, '; the lock was released, the stored session is left unchanged');

                return false;
            }
            $this->lock = $r['body']['lock'];
            $this->isNew = (bool) ($r['body']['new'] ?? (0 === ($r['body']['version'] ?? 0)));

            return $data;
        }
        if (423 === $r['status']) {
            if (self::ON_LOCK_TIMEOUT_READONLY === $this->onLockTimeout) {
                $this->fail($id, sprintf('lock not obtained within %d ms at %s (HTTP 423 %s); serving the session read-only, changes of this request will be discarded', $this->lockWaitMs, self::shown($r), self::reason($r)));
                $data = $this->plainRead($id, 'read-only read');
                if (false !== $data && !$this->degraded) {
                    $this->readOnly = true;
                }

                return $data;
            }
            $this->fail($id, sprintf('lock not obtained within %d ms at %s (HTTP 423 %s); session_start() fails (set SESSION_SERVICE_ON_LOCK_TIMEOUT=readonly to serve it read-only instead)', $this->lockWaitMs, self::shown($r), self::reason($r)));

            return false;
        }
        if (200 === $r['status']) {
            self::invalid($r, \is_array($r['body']) ? 'its body has no string "lock"' : null);
        }

        return $this->readFailed('lock', $id, $r);
    }

    private function plainRead(string $id, string $op): string|false
    {
        $r = $this->request('GET', $this->sessionPath($id), null);
        if (404 === $r['status']) {
            $this->isNew = true;

            return '';
        }
        if (200 === $r['status'] && \is_array($r['body'])) {
            $data = $this->decodeData($r['body']['data'] ?? null, $r['format']);
            if (false !== $data) {
                return $data;
            }
            self::invalid($r, self::dataProblem($r));
        } elseif (200 === $r['status']) {
            self::invalid($r, null);
        }

        return $this->readFailed($op, $id, $r);
    }

    /** @param array{status:int, body:mixed, service:string, path:string, error:?string, format:?string, problem:?string, invalid:?string} $r */
    private function readFailed(string $op, string $id, array $r): string|false
    {
        if (self::isUnavailable($r) && self::ON_UNAVAILABLE_EMPTY === $this->onUnavailable) {
            $this->fail($id, sprintf('%s failed: %s; on_unavailable=empty: starting with an empty session that will not be saved (the stored session is left as it is)', $op, self::describe($r)));
            $this->degraded = true;

            return '';
        }
        $this->logFailure($op, $id, $r);

        return false;
    }

    private function put(string $id, string $data): bool
    {
        $mine = $this->sid === $id;
        $body = ['data' => $data, 'ttl' => $this->ttl()];
        if ($mine && null !== $this->lock) {
            $body['lock'] = $this->lock;
        }
        $r = $this->request('PUT', $this->sessionPath($id), $body);
        if (200 === $r['status'] && !self::isWriteResult($r)) {
            // Not the service's answer (a proxy's page, a truncated or foreign body):
            // report the failure; a lock still held is released by close().
            self::invalid($r, 'its body has no integer "version"');
            $this->logFailure('write', $id, $r, '; whether the data was saved is unknown');

            return false;
        }
        if (200 === $r['status']) {
            if ($mine) {
                $this->lock = null; // the write released it
                $this->isNew = false;
            }

            return true;
        }
        if ($mine && (409 === $r['status'] || 0 === $r['status'])) {
            // 409: not ours any more. No answer: the write may still be applied, and a
            // release would most likely time out too; the lease ends the lock.
            $this->lock = null;
        }
        $this->logFailure('write', $id, $r, match (true) {
            413 === $r['status'] => sprintf('; %d bytes not saved, the stored session is left unchanged', \strlen($data)),
            0 === $r['status'] && self::wentOut($r) => '; the write may or may not have been saved: whether the data was saved is unknown',
            default => '',
        });
        // Any lock still held (refused write) is released by close().
        return false;
    }

    private function release(string $id, string $lock): void
    {
        $r = $this->request('DELETE', $this->sessionPath($id).'/lock?lock='.rawurlencode($lock), null);
        if (204 !== $r['status'] && 200 !== $r['status'] && 409 !== $r['status']) {
            $this->logFailure('lock release', $id, $r, '; the lease will expire by itself');
        }
        if ($this->sid === $id) {
            $this->lock = null;
        }
    }

    private function resetState(?string $id): void
    {
        $this->sid = $id;
        $this->lock = null;
        $this->isNew = false;
        $this->readOnly = false;
    }

    private function ttl(): int
    {
        return max(1, (int) \ini_get('session.gc_maxlifetime'));
    }

    private function sessionPath(string $id): string
    {
        return '/v1/sessions/'.rawurlencode($id);
    }

    /** The session bytes of a response's "data": msgpack bin/str as is, JSON base64. */
    private function decodeData(mixed $data, ?string $format): string|false
    {
        if (!\is_string($data)) {
            return false;
        }

        return 'json' === $format ? base64_decode($data, true) : $data;
    }

    /** @param array{status:int, body:mixed, service:string, path:string, error:?string, format:?string, problem:?string, invalid:?string} $r */
    private static function dataProblem(array $r): string
    {
        $data = \is_array($r['body']) ? ($r['body']['data'] ?? null) : null;
        if (!\is_array($r['body']) || !array_key_exists('data', $r['body'])) {
            return 'its body has no "data"';
        }
        if (!\is_string($data)) {
            return sprintf('its "data" is %s, not bytes', get_debug_type($data));
        }

        return 'its "data" is not valid base64';
    }

    /** @param array{status:int, body:mixed, service:string, path:string, error:?string, format:?string, problem:?string, invalid:?string} $r */
    private static function isWriteResult(array $r): bool
    {
        return \is_array($r['body']) && \is_int($r['body']['version'] ?? null);
    }

    /**
     * Marks an HTTP answer as not a valid service answer. $problem null: the
     * body's own decoding problem (or its absence).
     *
     * @param array{status:int, body:mixed, service:string, path:string, error:?string, format:?string, problem:?string, invalid:?string} $r
     */
    private static function invalid(array &$r, ?string $problem): void
    {
        $r['invalid'] = $r['problem'] ?? $problem ?? 'its body is empty';
    }

    /**
     * One HTTP call to the service, trying the next URL when one is unreachable.
     *
     * @param array<string, mixed>|null $body
     *
     * @return array{status:int, body:mixed, service:string, path:string, error:?string, format:?string, problem:?string, invalid:?string}
     *         status 0 = no complete HTTP answer (error says why); service = the URL
     *         of the service asked; path = the request's path, session id and lock
     *         token included: it reaches the log only masked, through shown();
     *         format = the body's format (msgpack, json or null); problem = why the
     *         body could not be decoded (null when it was); invalid = set by invalid()
     */
    private function request(string $method, string $path, ?array $body, int $extraTimeoutMs = 0): array
    {
        $ch = $this->curl ?? $this->newCurl();
        if (null === $ch) {
            return self::noAnswer($this->urls[0], $path, 'curl_init() failed');
        }
        $payload = null === $body ? null : $this->encode($body);
        curl_setopt_array($ch, $this->callOptions($method, $payload, $extraTimeoutMs));

        $count = \count($this->urls);
        $result = null;
        for ($attempt = 0; $attempt < $count; ++$attempt) {
            $index = ($this->urlIndex + $attempt) % $count;
            curl_setopt($ch, \CURLOPT_URL, $this->urls[$index].$path);
            $raw = curl_exec($ch);
            $errno = curl_errno($ch);
            if (0 === $errno && \is_string($raw)) {
                $status = (int) curl_getinfo($ch, \CURLINFO_RESPONSE_CODE);
                [$decoded, $format, $problem] = $this->decodeBody($raw, (string) curl_getinfo($ch, \CURLINFO_CONTENT_TYPE));
                $result = ['status' => $status, 'body' => $decoded, 'service' => $this->urls[$index], 'path' => $path, 'error' => null, 'format' => $format, 'problem' => $problem, 'invalid' => null];
                if (503 !== $status || $attempt === $count - 1) {
                    $this->urlIndex = $index;

                    return $result;
                }
                continue; // this instance cannot reach the database: try the next one
            }
            $error = sprintf('curl error %d: %s', $errno, curl_error($ch));
            $answered = (int) curl_getinfo($ch, \CURLINFO_RESPONSE_CODE);
            if ($answered > 0) {
                // The status line came, the rest did not (truncated body, reset, timeout).
                $error = sprintf('incomplete answer: HTTP %d, then %s', $answered, $error);
            } elseif (\in_array($errno, self::TLS_ERRORS, true)) {
                $error .= '' !== $this->caFile || '' !== $this->caPath
                    ? ' (TLS: the service\'s certificate is not signed by the CA of SESSION_SERVICE_CA_FILE/CA_PATH, or does not name this host)'
                    : ' (TLS: the service\'s certificate could not be verified; set SESSION_SERVICE_CA_FILE to the CA that signed it)';
            }
            $result = self::noAnswer($this->urls[$index], $path, $error);
            // Only failures before the request reached a service are safe to retry
            // elsewhere (a timed-out lock request may have been granted, a timed-out
            // write may still be applied). On a reused keep-alive connection the
            // connect time is 0 although the request went out: judge by whether curl
            // got as far as sending it. That also covers curl's own silent retry: when
            // a reused connection closes with no answer, curl sends the request again
            // on a new connection, and a refused connect then reports curl error 7
            // although the first copy went out (and may have been applied): the
            // request size counts both attempts, so it is not 0 then. (No curl option
            // turns that retry off; a fresh connection per write would cost the
            // keep-alive the lock and the write share. Reading the counters costs
            // nothing on the success path: only failures get here.)
            $sent = (int) curl_getinfo($ch, \CURLINFO_REQUEST_SIZE) > 0
                || (float) curl_getinfo($ch, \CURLINFO_PRETRANSFER_TIME) > 0.0;
            $beforeRequest = !$sent
                && \in_array($errno, [\CURLE_COULDNT_CONNECT, \CURLE_COULDNT_RESOLVE_HOST, \CURLE_OPERATION_TIMEDOUT], true);
            if (!$beforeRequest) {
                if (0 === $answered && !\in_array($errno, self::TLS_ERRORS, true)) {
                    // It reached the service (timed out or reset while waiting): not "unreachable".
                    $result['error'] = \in_array($errno, [\CURLE_COULDNT_CONNECT, \CURLE_COULDNT_RESOLVE_HOST], true)
                        ? 'the request went out on a kept-alive connection that closed without an answer, and curl\'s retry on a new connection failed: '.$error
                        : 'the request went out, then '.$error;
                }

                return $result;
            }
            if ($attempt < $count - 1) {
                self::log(sprintf('%s unreachable (%s), trying %s', $this->urls[$index], $error, $this->urls[($index + 1) % $count]));
            }
        }

        return $result ?? self::noAnswer($this->urls[0], $path, 'no url');
    }

    /**
     * Creates the one curl handle of this request, with the options that are the
     * same for every call. The handle keeps them: there is no curl_reset() between
     * calls (it keeps the live connections but would make every call set them all
     * again), so callOptions() sets, on every call, each option a call may change.
     */
    private function newCurl(): ?\CurlHandle
    {
        $ch = curl_init();
        if (false === $ch) {
            return null;
        }
        $options = [
            \CURLOPT_RETURNTRANSFER => true,
            \CURLOPT_MAXFILESIZE => self::MAX_ANSWER_BYTES,
            \CURLOPT_CONNECTTIMEOUT_MS => $this->connectTimeoutMs,
            \CURLOPT_NOSIGNAL => true,
            \CURLOPT_TCP_NODELAY => true,
            \CURLOPT_HTTP_VERSION => \CURL_HTTP_VERSION_1_1,
            // https: the certificate and host name are always verified, never
            // switched off; ca_file/ca_path name the CA when it is not a system one.
            \CURLOPT_SSL_VERIFYPEER => true,
            \CURLOPT_SSL_VERIFYHOST => 2,
            \CURLOPT_FOLLOWLOCATION => false,
        ];
        if ('' !== $this->caFile) {
            $options[\CURLOPT_CAINFO] = $this->caFile;
        }
        if ('' !== $this->caPath) {
            $options[\CURLOPT_CAPATH] = $this->caPath;
        }
        curl_setopt_array($ch, $options);

        $accept = 'Accept: '.($this->msgpack ? 'application/msgpack' : 'application/json');
        $auth = '' !== $this->token ? ['Authorization: Bearer '.$this->token] : [];
        // "Expect:" stops curl from asking for 100-continue before a large body; a
        // call without a body has no use for it (curl sends no empty header anyway).
        $this->headersWithoutBody = [$accept, ...$auth];
        $this->headersWithBody = [$accept, 'Expect:', ...$auth, 'Content-Type: '.($this->msgpack ? 'application/msgpack' : 'application/json')];
        $this->headersSet = null;

        return $this->curl = $ch;
    }

    /**
     * The options of one call (the URL aside). The previous call's options are still
     * on the handle, so each one a call may change is set here every time: HTTPGET
     * first puts the method back to GET, then POSTFIELDS (which makes it a POST) and
     * CUSTOMREQUEST (null: none) give this call's method and body; the timeout is
     * longer for a lock, which may wait; the header list is set when the presence of
     * a body changes.
     *
     * @return array<int, mixed>
     */
    private function callOptions(string $method, ?string $payload, int $extraTimeoutMs): array
    {
        $options = [
            \CURLOPT_HTTPGET => true,
            \CURLOPT_CUSTOMREQUEST => 'GET' === $method ? null : $method,
            \CURLOPT_TIMEOUT_MS => $this->timeoutMs + $extraTimeoutMs,
        ];
        if (null !== $payload || 'POST' === $method) {
            $options[\CURLOPT_POSTFIELDS] = $payload ?? '';
        }
        $withBody = null !== $payload;
        if ($withBody !== $this->headersSet) {
            $options[\CURLOPT_HTTPHEADER] = $withBody ? $this->headersWithBody : $this->headersWithoutBody;
            $this->headersSet = $withBody;
        }

        return $options;
    }

    /**
     * A request body: msgpack (session data as bin), or JSON with the data in base64.
     *
     * @param array<string, mixed> $body
     */
    private function encode(array $body): string
    {
        if ($this->msgpack) {
            return self::packMap($body);
        }
        if (isset($body['data'])) {
            $body['data'] = base64_encode($body['data']);
        }

        return json_encode($body, \JSON_THROW_ON_ERROR | \JSON_UNESCAPED_SLASHES);
    }

    /** @return array{status:int, body:mixed, service:string, path:string, error:?string, format:?string, problem:?string, invalid:?string} */
    private static function noAnswer(string $service, string $path, string $error): array
    {
        return ['status' => 0, 'body' => null, 'service' => $service, 'path' => $path, 'error' => $error, 'format' => null, 'problem' => null, 'invalid' => null];
    }

    /**
     * The URL of an answer fit for the log: the session id and lock token are
     * masked. Only failures are logged, so it is only worked out for them.
     *
     * @param array{status:int, body:mixed, service:string, path:string, error:?string, format:?string, problem:?string, invalid:?string} $r
     */
    private static function shown(array $r): string
    {
        return $r['service'].preg_replace(['~^/v1/sessions/[^/?]+~', '~([?&]lock=)[^&]*~'], ['/v1/sessions/{sid}', '$1…'], $r['path']);
    }

    /**
     * @return array{0:mixed, 1:?string, 2:?string} the decoded body, its format
     *         (msgpack/json, null if neither) and why it could not be decoded (null if it could)
     */
    private function decodeBody(string $raw, string $contentType): array
    {
        if ('' === $raw) {
            return [null, null, 'its body is empty'];
        }
        $size = \strlen($raw);
        if (str_contains($contentType, 'msgpack')) {
            if (!\function_exists('msgpack_unpack')) {
                return [null, 'msgpack', sprintf('its body is msgpack (%d bytes) but ext-msgpack is not loaded', $size)];
            }
            // php_only=0: a map keyed by nil stays an array. With ext-msgpack's default
            // (1) it is turned into an object of the class it names (__wakeup and
            // __destruct run): an answer must never instantiate application classes.
            // (ini_set() returns the value it replaces, so no ini_get() is needed.)
            $prev = ini_set('msgpack.error_display', '0');
            $prevPhpOnly = ini_set('msgpack.php_only', '0');
            try {
                $value = @msgpack_unpack($raw);
            } finally {
                ini_set('msgpack.error_display', (string) $prev);
                ini_set('msgpack.php_only', (string) $prevPhpOnly);
            }
            if (!\is_array($value)) {
                return [null, 'msgpack', sprintf('its body (%d bytes, %s) is not a msgpack map', $size, $contentType)];
            }

            return [$value, 'msgpack', null];
        }
        if (str_contains($contentType, 'json')) {
            $value = json_decode($raw, true, 16);
            if (!\is_array($value)) {
                return [null, 'json', sprintf('its body (%d bytes, %s) is not a JSON object', $size, $contentType)];
            }

            return [$value, 'json', null];
        }

        return [null, null, sprintf('its Content-Type is %s, not msgpack or JSON (%d bytes)', '' === $contentType ? 'missing' : '"'.$contentType.'"', $size)];
    }

    /**
     * No complete answer, but the request reached the service (it may have been
     * applied): timed out or cut off after it was sent, or an incomplete answer.
     *
     * @param array{status:int, body:mixed, service:string, path:string, error:?string, format:?string, problem:?string, invalid:?string} $r
     */
    private static function wentOut(array $r): bool
    {
        return str_starts_with((string) $r['error'], 'the request went out')
            || str_starts_with((string) $r['error'], 'incomplete answer');
    }

    /** @param array{status:int, body:mixed, service:string, path:string, error:?string, format:?string, problem:?string, invalid:?string} $r */
    private static function isUnavailable(array $r): bool
    {
        return 0 === $r['status'] || $r['status'] >= 500 || null !== $r['invalid'];
    }

    /** @param array{status:int, body:mixed, service:string, path:string, error:?string, format:?string, problem:?string, invalid:?string} $r */
    private static function reason(array $r): string
    {
        $body = \is_array($r['body']) ? $r['body'] : [];
        $error = \is_string($body['error'] ?? null) ? $body['error'] : '';
        $detail = \is_string($body['detail'] ?? null) ? $body['detail'] : '';
        if ('' === $error && '' === $detail) {
            return null !== $r['problem'] && 'its body is empty' !== $r['problem']
                ? '(no error body: '.$r['problem'].')'
                : '(no error body)';
        }

        return trim($error.('' !== $detail ? ': '.$detail : ''));
    }

    /** @param array{status:int, body:mixed, service:string, path:string, error:?string, format:?string, problem:?string, invalid:?string} $r */
    private static function describe(array $r): string
    {
        if (0 === $r['status']) {
            if (str_starts_with((string) $r['error'], 'incomplete answer')) {
                return sprintf('%s from %s', $r['error'], self::shown($r));
            }
            if (str_starts_with((string) $r['error'], 'the request went out')) {
                return sprintf('no answer from %s: %s', self::shown($r), $r['error']);
            }

            return sprintf('service unreachable at %s (%s)', self::shown($r), $r['error'] ?? 'no answer');
        }
        if (null !== $r['invalid']) {
            return sprintf('%s answered HTTP %d but %s: not a session-service answer', self::shown($r), $r['status'], $r['invalid']);
        }

        return sprintf('%s answered HTTP %d %s', self::shown($r), $r['status'], self::reason($r));
    }

    /** @param array{status:int, body:mixed, service:string, path:string, error:?string, format:?string, problem:?string, invalid:?string} $r */
    private function logFailure(string $op, string $id, array $r, string $suffix = ''): void
    {
        $hint = match ($r['status']) {
            401 => ' (check SESSION_SERVICE_TOKEN)',
            409 => ' (the lock was lost: its lease ran out or the session was destroyed; this request\'s changes are not saved)',
            default => '',
        };
        $this->fail($id, sprintf('%s failed: %s%s%s', $op, self::describe($r), $hint, $suffix));
    }

    /** Log a failure of this session (never its raw id) and keep it for lastError(). */
    private function fail(string $id, string $message): void
    {
        $this->lastError = $message;
        self::log(sprintf('%s: %s', self::label($id), $message));
    }

    private static function label(string $id): string
    {
        return 'session '.substr(hash('sha256', $id), 0, 12);
    }

    private static function log(string $message): void
    {
        error_log('session-service: '.$message);
    }

    /**
     * @param string|list<string> $value comma-separated or a list
     *
     * @return non-empty-list<string>
     */
    private static function urlList(mixed $value): array
    {
        $urls = [];
        foreach (\is_array($value) ? $value : explode(',', (string) $value) as $url) {
            $url = rtrim(trim((string) $url), '/');
            if ('' === $url) {
                continue;
            }
            if (!preg_match('~^https?://~i', $url)) {
                throw new \InvalidArgumentException(sprintf('session-service: url "%s" must start with http:// or https://', $url));
            }
            $urls[] = $url;
        }
        if (!$urls) {
            throw new \InvalidArgumentException('session-service: no service url given (option "url" or SESSION_SERVICE_URL)');
        }

        return $urls;
    }

    /**
     * The options carried by session.save_path, as phpredis and memcached users set
     * them in php.ini: "URL[,URL...][?key=value&key=value...]", keys being option
     * names, values percent-decoded. A save_path that does not start with http:// or
     * https:// is not for this handler (the files handler's directory): none.
     *
     * @return array<string, string>
     */
    private static function savePathOptions(string $path): array
    {
        if (!preg_match('~^\s*https?://~i', $path)) {
            return [];
        }
        [$urls, $query] = explode('?', $path, 2) + [1 => ''];
        $found = ['url' => $urls];
        foreach (explode('&', $query) as $pair) {
            if ('' === trim($pair)) {
                continue;
            }
            $parts = explode('=', $pair, 2);
            $key = rawurldecode(trim($parts[0]));
            $problem = match (true) {
                !isset($parts[1]) => 'has no value (write key=value)',
                'url' === $key => 'is not a key: the URLs come before "?"',
                'token' === $key => 'is refused: session.save_path is shown by phpinfo(); put the token in a file readable by PHP only and give token_file=',
                !isset(self::OPTIONS[$key]) => sprintf('is not an option (known: %s)', implode(', ', array_diff(array_keys(self::OPTIONS), ['url', 'token']))),
                isset($found[$key]) => 'is given twice',
                '' === trim(rawurldecode($parts[1])) => 'has an empty value',
                default => null,
            };
            if (null !== $problem) {
                throw new \InvalidArgumentException(sprintf('session-service: session.save_path: key "%s" %s', $key, $problem));
            }
            $found[$key] = rawurldecode($parts[1]);
        }

        return $found;
    }

    private static function tokenValue(string $token): string
    {
        $token = trim($token);
        if (preg_match('/[\x00-\x1f\x7f]/', $token)) {
            throw new \InvalidArgumentException('session-service: option "token" must be one line of printable characters');
        }

        return $token;
    }

    private static function tokenFromFile(string $file): string
    {
        $token = is_file($file) && is_readable($file) ? file_get_contents($file) : false;
        if (false === $token) {
            throw new \InvalidArgumentException(sprintf('session-service: option "token_file": "%s" is not a readable file', $file));
        }
        if ('' === trim($token)) {
            throw new \InvalidArgumentException(sprintf('session-service: option "token_file": "%s" is empty', $file));
        }

        return self::tokenValue($token);
    }

    private static function readableFile(string $name, string $file): string
    {
        $file = trim($file);
        if ('' !== $file && (!is_file($file) || !is_readable($file))) {
            throw new \InvalidArgumentException(sprintf('session-service: option "%s": "%s" is not a readable file', $name, $file));
        }

        return $file;
    }

    private static function directory(string $name, string $dir): string
    {
        $dir = trim($dir);
        if ('' !== $dir && !is_dir($dir)) {
            throw new \InvalidArgumentException(sprintf('session-service: option "%s": "%s" is not a directory', $name, $dir));
        }

        return $dir;
    }

    private static function intOption(string $name, mixed $value, int $min): int
    {
        if (\is_int($value) || (\is_string($value) && preg_match('/^\s*\d+\s*$/D', $value))) {
            $int = (int) $value;
            if ($int >= $min) {
                return $int;
            }
        }
        throw new \InvalidArgumentException(sprintf('session-service: option "%s" must be an integer >= %d, got %s', $name, $min, var_export($value, true)));
    }

    /** @param list<string> $allowed */
    private static function choice(string $name, mixed $value, array $allowed): string
    {
        $value = strtolower(trim((string) $value));
        if (!\in_array($value, $allowed, true)) {
            throw new \InvalidArgumentException(sprintf('session-service: option "%s" must be one of %s, got "%s"', $name, implode(', ', $allowed), $value));
        }

        return $value;
    }

    /**
     * Msgpack encoding of a request body. ext-msgpack packs every PHP string as
     * msgpack str, but session data is arbitrary bytes and must go as bin.
     *
     * @param array<string, int|string> $map keys of fewer than 32 bytes
     */
    private static function packMap(array $map): string
    {
        $out = \chr(0x80 | \count($map));
        foreach ($map as $key => $value) {
            $out .= \chr(0xa0 | \strlen($key)).$key; // fixstr
            if (\is_int($value)) {
                $out .= "\xd3".pack('J', $value);
            } elseif ('data' === $key) {
                $len = \strlen($value);
                $out .= ($len < 0x100 ? "\xc4".\chr($len) : ($len < 0x10000 ? "\xc5".pack('n', $len) : "\xc6".pack('N', $len))).$value;
            } else {
                $out .= self::packStr($value);
            }
        }

        return $out;
    }

    private static function packStr(string $s): string
    {
        $len = \strlen($s);
        if ($len < 32) {
            return \chr(0xa0 | $len).$s;
        }

        return ($len < 0x100 ? "\xd9".\chr($len) : ($len < 0x10000 ? "\xda".pack('n', $len) : "\xdb".pack('N', $len))).$s;
    }
}
