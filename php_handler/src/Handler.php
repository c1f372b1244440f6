<?php

declare(strict_types=1);

namespace SessionService;

/**
 * PHP session save handler that keeps $_SESSION in the session service
 * (docs/api.md), so any number of stateless web nodes share sessions.
 *
 * This class is the session contract (as Symfony's session handlers are):
 * PHP's SessionHandlerInterface and SessionUpdateTimestampHandlerInterface, and
 * the state of the session being handled. It follows PHP's own contract as the
 * files handler does:
 *  - exclusive lock from session_start() to session_write_close() (or the end
 *    of the request, including after a fatal error; the lease covers a crash);
 *  - read() of a new session returns '' (false only for a real failure);
 *  - validateId() for session.use_strict_mode (it takes the lock and reads,
 *    and read() then reuses that result, so strict mode costs no extra call);
 *  - updateTimestamp() for session.lazy_write (touch instead of write);
 *  - destroy() for session_destroy() and session_regenerate_id(true);
 *  - session.gc_maxlifetime is the ttl of every write; gc() is left to the
 *    service and reports 0.
 * The rest has its own class: Options (configuration), ServiceClient (curl and
 * failover), Answer (what a call came back with), Codec (msgpack/JSON). This one
 * stays about 470 lines: PHP's ten contract methods share the lock bookkeeping
 * below, and splitting them would scatter that state.
 *
 * Every failure returns false and writes one specific line to the error log
 * naming the URL, the HTTP status and the service's error/detail. The raw
 * session id is never logged, only a short SHA-256 prefix.
 */
final class Handler implements \SessionHandlerInterface, \SessionUpdateTimestampHandlerInterface
{
    public const LOCK_EXCLUSIVE = Options::LOCK_EXCLUSIVE;
    public const LOCK_NONE = Options::LOCK_NONE;
    public const ON_UNAVAILABLE_FAIL = Options::ON_UNAVAILABLE_FAIL;
    public const ON_UNAVAILABLE_EMPTY = Options::ON_UNAVAILABLE_EMPTY;
    public const ON_LOCK_TIMEOUT_FAIL = Options::ON_LOCK_TIMEOUT_FAIL;
    public const ON_LOCK_TIMEOUT_READONLY = Options::ON_LOCK_TIMEOUT_READONLY;

    /** option name => [environment variable, default] (see Options) */
    public const OPTIONS = Options::DEFINITIONS;

    private const SID_PATTERN = '/^[A-Za-z0-9,-]{22,256}$/D';

    private Options $options;
    /** Made at the first call, so that a PHP request without a session loads no more. */
    private ?ServiceClient $client = null;

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
     * @param array<string, mixed> $options see Options::DEFINITIONS; each falls back to
     *                                      its environment variable, then to its key in
     *                                      session.save_path, then to its default
     */
    public function __construct(array $options = [])
    {
        $this->options = Options::resolve($options);
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
        if (200 === $r->status && !$r->isWriteResult()) {
            $r->markInvalid('its body has no integer "version"');
            $this->logFailure('touch', $id, $r, '; whether the expiry was extended is unknown');

            return false; // a lock still held is released by close()
        }
        if (200 === $r->status) {
            if ($mine) {
                $this->lock = null;
            }

            return true;
        }
        if (404 === $r->status) {
            // Expired (or destroyed) meanwhile: a touch never revives it, so write the data.
            return $this->put($id, $data);
        }
        if ($mine && (409 === $r->status || 0 === $r->status)) {
            $this->lock = null; // as in put()
        }
        $this->logFailure('touch', $id, $r, 0 === $r->status && $r->wentOut() ? '; whether the expiry was extended is unknown' : '');

        return false;
    }

    public function destroy(string $id): bool
    {
        $r = $this->request('DELETE', $this->sessionPath($id), null);
        if (204 === $r->status || 200 === $r->status || 404 === $r->status) {
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
        if (self::LOCK_NONE === $this->options->lock) {
            return $this->plainRead($id, 'read');
        }
        $query = sprintf('/lock?wait_ms=%d&lease_ms=%d', $this->options->lockWaitMs, $this->options->lockLeaseMs);
        $r = $this->request('POST', $this->sessionPath($id).$query, null, $this->options->lockWaitMs);
        $lock = $r->body['lock'] ?? null;
        if (200 === $r->status && \is_string($lock)) {
            $data = Codec::data($r->body['data'] ?? null, $r->format);
            if (false === $data) {
                // Never start the request with a session it could not read: its write
                // would overwrite the stored data. Let the lock go at once.
                $this->release($id, $lock);
                $r->markInvalid($r->dataProblem());
                $this->logFailure('lock', $id, $r, '; the lock was released, the stored session is left unchanged');

                return false;
            }
            $this->lock = $lock;
            $this->isNew = (bool) ($r->body['new'] ?? (0 === ($r->body['version'] ?? 0)));

            return $data;
        }
        if (423 === $r->status) {
            if (self::ON_LOCK_TIMEOUT_READONLY === $this->options->onLockTimeout) {
                $this->fail($id, sprintf('lock not obtained within %d ms at %s (HTTP 423 %s); serving the session read-only, changes of this request will be discarded', $this->options->lockWaitMs, $r->shown(), $r->reason()));
                $data = $this->plainRead($id, 'read-only read');
                if (false !== $data && !$this->degraded) {
                    $this->readOnly = true;
                }

                return $data;
            }
            $this->fail($id, sprintf('lock not obtained within %d ms at %s (HTTP 423 %s); session_start() fails (set SESSION_SERVICE_ON_LOCK_TIMEOUT=readonly to serve it read-only instead)', $this->options->lockWaitMs, $r->shown(), $r->reason()));

            return false;
        }
        if (200 === $r->status) {
            $r->markInvalid(null !== $r->body ? 'its body has no string "lock"' : null);
        }

        return $this->readFailed('lock', $id, $r);
    }

    private function plainRead(string $id, string $op): string|false
    {
        $r = $this->request('GET', $this->sessionPath($id), null);
        if (404 === $r->status) {
            $this->isNew = true;

            return '';
        }
        if (200 === $r->status && null !== $r->body) {
            $data = Codec::data($r->body['data'] ?? null, $r->format);
            if (false !== $data) {
                return $data;
            }
            $r->markInvalid($r->dataProblem());
        } elseif (200 === $r->status) {
            $r->markInvalid(null);
        }

        return $this->readFailed($op, $id, $r);
    }

    private function readFailed(string $op, string $id, Answer $r): string|false
    {
        if ($r->isUnavailable() && self::ON_UNAVAILABLE_EMPTY === $this->options->onUnavailable) {
            $this->fail($id, sprintf('%s failed: %s; on_unavailable=empty: starting with an empty session that will not be saved (the stored session is left as it is)', $op, $r->describe()));
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
        if (200 === $r->status && !$r->isWriteResult()) {
            // Not the service's answer (a proxy's page, a truncated or foreign body):
            // report the failure; a lock still held is released by close().
            $r->markInvalid('its body has no integer "version"');
            $this->logFailure('write', $id, $r, '; whether the data was saved is unknown');

            return false;
        }
        if (200 === $r->status) {
            if ($mine) {
                $this->lock = null; // the write released it
                $this->isNew = false;
            }

            return true;
        }
        if ($mine && (409 === $r->status || 0 === $r->status)) {
            // 409: not ours any more. No answer: the write may still be applied, and a
            // release would most likely time out too; the lease ends the lock.
            $this->lock = null;
        }
        $this->logFailure('write', $id, $r, match (true) {
            413 === $r->status => sprintf('; %d bytes not saved, the stored session is left unchanged', \strlen($data)),
            0 === $r->status && $r->wentOut() => '; the write may or may not have been saved: whether the data was saved is unknown',
            default => '',
        });

        // Any lock still held (refused write) is released by close().
        return false;
    }

    private function release(string $id, string $lock): void
    {
        $r = $this->request('DELETE', $this->sessionPath($id).'/lock?lock='.rawurlencode($lock), null);
        if (204 !== $r->status && 200 !== $r->status && 409 !== $r->status) {
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

    /** @param array<string, int|string>|null $body */
    private function request(string $method, string $path, ?array $body, int $extraTimeoutMs = 0): Answer
    {
        return ($this->client ??= new ServiceClient($this->options))->request($method, $path, $body, $extraTimeoutMs);
    }

    private function logFailure(string $op, string $id, Answer $r, string $suffix = ''): void
    {
        $hint = match ($r->status) {
            401 => ' (check SESSION_SERVICE_TOKEN)',
            409 => ' (the lock was lost: its lease ran out or the session was destroyed; this request\'s changes are not saved)',
            default => '',
        };
        $this->fail($id, sprintf('%s failed: %s%s%s', $op, $r->describe(), $hint, $suffix));
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
}
