<?php

declare(strict_types=1);

namespace SessionService;

/**
 * HTTP calls to the session service over one curl handle per PHP request, and
 * failover between its URLs.
 *
 * The handle keeps its connection alive between calls on purpose: the lock and
 * the write of a request share it. A URL that cannot be reached (refused, not
 * resolved, timed out while connecting, or answering 503) is skipped for the next
 * one, and the request stays on the URL that answered. A request whose bytes may
 * have reached a service is never sent to another URL (docs/php_handler.md,
 * "Failures").
 */
final class ServiceClient
{
    /** curl errors of the TLS layer (handshake, certificate, CA file). */
    private const TLS_ERRORS = [35, 51, 53, 54, 58, 59, 60, 64, 66, 77, 80, 82, 83, 90, 91];

    /**
     * The largest answer read: the service's largest session (16 MiB at most) in
     * base64 JSON, with room to spare. Something else on the service's port that
     * announces more is refused before its body is read, instead of filling PHP's
     * memory_limit and ending the request with a fatal error.
     */
    private const MAX_ANSWER_BYTES = 64 * 1024 * 1024;

    private Codec $codec;
    /** The one curl handle of this request (keep-alive between lock and write). */
    private ?\CurlHandle $curl = null;
    /** @var list<string> request headers of a call without a body (made with the handle) */
    private array $headersWithoutBody = [];
    /** @var list<string> request headers of a call with a body */
    private array $headersWithBody = [];
    /** Which header list $curl has: with a body (true), without (false), none yet (null). */
    private ?bool $headersSet = null;
    /** Index in the URLs of the service currently used (moves on when one is unreachable). */
    private int $urlIndex = 0;

    public function __construct(private Options $options)
    {
        $this->codec = new Codec($options->msgpack);
    }

    /**
     * One HTTP call to the service, trying the next URL when one is unreachable.
     *
     * @param array<string, int|string>|null $body
     */
    public function request(string $method, string $path, ?array $body, int $extraTimeoutMs = 0): Answer
    {
        $urls = $this->options->urls;
        $ch = $this->curl ?? $this->newCurl();
        if (null === $ch) {
            return Answer::none($urls[0], $path, 'curl_init() failed');
        }
        $payload = null === $body ? null : $this->codec->encode($body);
        curl_setopt_array($ch, $this->callOptions($method, $payload, $extraTimeoutMs));

        $count = \count($urls);
        $result = null;
        for ($attempt = 0; $attempt < $count; ++$attempt) {
            $index = ($this->urlIndex + $attempt) % $count;
            curl_setopt($ch, \CURLOPT_URL, $urls[$index].$path);
            $raw = curl_exec($ch);
            $errno = curl_errno($ch);
            if (0 === $errno && \is_string($raw)) {
                $status = (int) curl_getinfo($ch, \CURLINFO_RESPONSE_CODE);
                [$decoded, $format, $problem] = Codec::decode($raw, (string) curl_getinfo($ch, \CURLINFO_CONTENT_TYPE));
                $result = new Answer($status, $decoded, $urls[$index], $path, null, $format, $problem);
                if (503 !== $status || $attempt === $count - 1) {
                    $this->urlIndex = $index;

                    return $result;
                }
                continue; // this instance cannot reach the database: try the next one
            }
            $error = sprintf('curl error %d: %s', $errno, curl_error($ch));
            $answered = (int) curl_getinfo($ch, \CURLINFO_RESPONSE_CODE);
            $tls = \in_array($errno, self::TLS_ERRORS, true);
            if ($answered > 0) {
                // The status line came, the rest did not (truncated body, reset, timeout).
                $error = sprintf('incomplete answer: HTTP %d, then %s', $answered, $error);
            } elseif ($tls) {
                $error .= '' !== $this->options->caFile || '' !== $this->options->caPath
                    ? ' (TLS: the service\'s certificate is not signed by the CA of SESSION_SERVICE_CA_FILE/CA_PATH, or does not name this host)'
                    : ' (TLS: the service\'s certificate could not be verified; set SESSION_SERVICE_CA_FILE to the CA that signed it)';
            }
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
            $connectError = \CURLE_COULDNT_CONNECT === $errno || \CURLE_COULDNT_RESOLVE_HOST === $errno;
            if ($sent || !($connectError || \CURLE_OPERATION_TIMEDOUT === $errno)) {
                if (0 === $answered && !$tls) {
                    // It reached the service (timed out or cut off while waiting): not "unreachable".
                    $error = $connectError
                        ? 'the request went out on a kept-alive connection that closed without an answer, and curl\'s retry on a new connection failed: '.$error
                        : 'the request went out, then '.$error;
                }

                return Answer::none($urls[$index], $path, $error);
            }
            $result = Answer::none($urls[$index], $path, $error);
            if ($attempt < $count - 1) {
                error_log(sprintf('session-service: %s unreachable (%s), trying %s', $urls[$index], $error, $urls[($index + 1) % $count]));
            }
        }

        return $result ?? Answer::none($urls[0], $path, 'no url');
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
            \CURLOPT_CONNECTTIMEOUT_MS => $this->options->connectTimeoutMs,
            \CURLOPT_NOSIGNAL => true,
            \CURLOPT_TCP_NODELAY => true,
            \CURLOPT_HTTP_VERSION => \CURL_HTTP_VERSION_1_1,
            // https: the certificate and host name are always verified, never
            // switched off; ca_file/ca_path name the CA when it is not a system one.
            \CURLOPT_SSL_VERIFYPEER => true,
            \CURLOPT_SSL_VERIFYHOST => 2,
            \CURLOPT_FOLLOWLOCATION => false,
        ];
        if ('' !== $this->options->caFile) {
            $options[\CURLOPT_CAINFO] = $this->options->caFile;
        }
        if ('' !== $this->options->caPath) {
            $options[\CURLOPT_CAPATH] = $this->options->caPath;
        }
        curl_setopt_array($ch, $options);

        $type = $this->codec->mediaType();
        $auth = '' !== $this->options->token ? ['Authorization: Bearer '.$this->options->token] : [];
        // "Expect:" stops curl from asking for 100-continue before a large body; a
        // call without a body has no use for it (curl sends no empty header anyway).
        $this->headersWithoutBody = ['Accept: '.$type, ...$auth];
        $this->headersWithBody = ['Accept: '.$type, 'Expect:', ...$auth, 'Content-Type: '.$type];
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
            \CURLOPT_TIMEOUT_MS => $this->options->timeoutMs + $extraTimeoutMs,
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
}
