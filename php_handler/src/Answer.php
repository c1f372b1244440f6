<?php

declare(strict_types=1);

namespace SessionService;

/**
 * What one call to the service came back with, and how to say it in a log line.
 *
 * status 0 means no complete HTTP answer ($error says why). $path is the request's
 * path with the session id and lock token in it: it reaches the log only masked,
 * through shown(). The body is trusted for nothing: the handler checks the fields
 * it needs, and marks an answer outside the contract with markInvalid().
 *
 * The properties are public and not readonly on purpose: nothing changes them
 * after construction but markInvalid(), and a readonly property's write takes
 * PHP's slow path (a scope check per property), which would cost every call.
 */
final class Answer
{
    /** @var ?string why this HTTP answer is not a valid service answer (set by markInvalid()), or null */
    public $invalid;

    /**
     * @param int           $status  the HTTP status, 0 for no complete answer
     * @param ?array<mixed> $body    the decoded body (null: none, or undecodable)
     * @param string        $service the base URL of the service asked
     * @param string        $path    the request's path (session id and lock token unmasked)
     * @param ?string       $error   why there is no complete answer
     * @param ?string       $format  msgpack, json, or null when the body is neither
     * @param ?string       $problem why the body could not be decoded (null when it could)
     */
    public function __construct(
        public $status,
        public $body,
        public $service,
        public $path,
        public $error = null,
        public $format = null,
        public $problem = null,
    ) {
    }

    /** No complete HTTP answer. */
    public static function none(string $service, string $path, string $error): self
    {
        return new self(0, null, $service, $path, $error);
    }

    /**
     * Marks an HTTP answer as not a valid service answer. $problem null: the
     * body's own decoding problem (or its absence).
     */
    public function markInvalid(?string $problem): void
    {
        $this->invalid = $this->problem ?? $problem ?? 'its body is empty';
    }

    /** The service cannot serve: no answer, a 5xx, or garbage. */
    public function isUnavailable(): bool
    {
        return 0 === $this->status || $this->status >= 500 || null !== $this->invalid;
    }

    /**
     * No complete answer, but the request reached the service (it may have been
     * applied): timed out or cut off after it was sent, or an incomplete answer.
     */
    public function wentOut(): bool
    {
        return 0 === $this->status && (
            str_starts_with((string) $this->error, 'the request went out')
            || str_starts_with((string) $this->error, 'incomplete answer'));
    }

    /** A write's or touch's answer: its body has an integer "version". */
    public function isWriteResult(): bool
    {
        return \is_int($this->body['version'] ?? null);
    }

    /** Why a 200 answer's "data" is unusable. */
    public function dataProblem(): string
    {
        if (null === $this->body || !\array_key_exists('data', $this->body)) {
            return 'its body has no "data"';
        }
        if (!\is_string($this->body['data'])) {
            return sprintf('its "data" is %s, not bytes', get_debug_type($this->body['data']));
        }

        return 'its "data" is not valid base64';
    }

    /**
     * The URL of the answer fit for the log: the session id and lock token are
     * masked. Only failures are logged, so it is only worked out for them.
     */
    public function shown(): string
    {
        return $this->service.preg_replace(['~^/v1/sessions/[^/?]+~', '~([?&]lock=)[^&]*~'], ['/v1/sessions/{sid}', '$1…'], $this->path);
    }

    /** The service's error and detail, or what was wrong with the body. */
    public function reason(): string
    {
        $error = \is_string($this->body['error'] ?? null) ? $this->body['error'] : '';
        $detail = \is_string($this->body['detail'] ?? null) ? $this->body['detail'] : '';
        if ('' === $error && '' === $detail) {
            return null !== $this->problem && 'its body is empty' !== $this->problem
                ? '(no error body: '.$this->problem.')'
                : '(no error body)';
        }

        return trim($error.('' !== $detail ? ': '.$detail : ''));
    }

    /** The whole answer in words, for a log line. */
    public function describe(): string
    {
        if (0 === $this->status) {
            if (str_starts_with((string) $this->error, 'incomplete answer')) {
                return sprintf('%s from %s', $this->error, $this->shown());
            }
            if (str_starts_with((string) $this->error, 'the request went out')) {
                return sprintf('no answer from %s: %s', $this->shown(), $this->error);
            }

            return sprintf('service unreachable at %s (%s)', $this->shown(), $this->error ?? 'no answer');
        }
        if (null !== $this->invalid) {
            return sprintf('%s answered HTTP %d but %s: not a session-service answer', $this->shown(), $this->status, $this->invalid);
        }

        return sprintf('%s answered HTTP %d %s', $this->shown(), $this->status, $this->reason());
    }
}
