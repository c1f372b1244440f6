<?php

declare(strict_types=1);

namespace SessionService;

/**
 * The handler's configuration, resolved once when the handler is created.
 *
 * Each option is looked up, separately, in the array given in code, then in its
 * environment variable, then in php.ini's session.save_path (as phpredis and
 * memcached users configure theirs), then falls back to its default
 * (docs/php_handler.md, "Options"). A bad value is an InvalidArgumentException
 * naming the option, the value and, when it did not come from code, its source:
 * a configuration error, never a runtime failure.
 *
 * This runs on every PHP request (prepend.php): only an option that is set
 * somewhere is parsed, the defaults are valid as they are.
 */
final class Options
{
    public const LOCK_EXCLUSIVE = 'exclusive';
    public const LOCK_NONE = 'none';
    public const ON_UNAVAILABLE_FAIL = 'fail';
    public const ON_UNAVAILABLE_EMPTY = 'empty';
    public const ON_LOCK_TIMEOUT_FAIL = 'fail';
    public const ON_LOCK_TIMEOUT_READONLY = 'readonly';

    /** option name (also its session.save_path key) => [environment variable, default] */
    public const DEFINITIONS = [
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

    /** Where a value came from, in order of precedence. */
    private const FROM_CODE = 0;
    private const FROM_ENV = 1;
    private const FROM_SAVE_PATH = 2;

    // The options in effect, at their defaults (DEFINITIONS) until resolve() sets
    // them. Public for the classes that use them, and changed by nothing after
    // resolve(). Neither readonly nor typed on purpose: this object is made on every
    // PHP request, and PHP writes a readonly or typed property on a slower path.

    /** @var non-empty-list<string> */
    public $urls = ['http://127.0.0.1:7070'];
    /** @var string */
    public $token = '';
    /** @var int */
    public $connectTimeoutMs = 1000;
    /** @var int */
    public $timeoutMs = 5000;
    /** @var self::LOCK_* */
    public $lock = self::LOCK_EXCLUSIVE;
    /** @var int */
    public $lockWaitMs = 5000;
    /** @var int */
    public $lockLeaseMs = 30000;
    /** @var self::ON_UNAVAILABLE_* */
    public $onUnavailable = self::ON_UNAVAILABLE_FAIL;
    /** @var self::ON_LOCK_TIMEOUT_* */
    public $onLockTimeout = self::ON_LOCK_TIMEOUT_FAIL;
    /** @var bool the wire format: msgpack (true) or JSON */
    public $msgpack = false;
    /** @var string */
    public $caFile = '';
    /** @var string */
    public $caPath = '';

    /** Use resolve(), which validates. */
    private function __construct()
    {
    }

    /**
     * The options in effect: $options (code), then the environment, then
     * $savePath (php.ini's session.save_path when null), then the defaults.
     *
     * @param array<string, mixed> $options
     */
    public static function resolve(array $options = [], ?string $savePath = null): self
    {
        foreach ($options as $name => $_) {
            if (!isset(self::DEFINITIONS[$name])) {
                throw new \InvalidArgumentException(sprintf('session-service: unknown option "%s"', $name));
            }
        }
        $fromIni = self::savePathOptions($savePath ?? (string) \ini_get('session.save_path'));
        $o = new self();
        $format = 'auto';
        $tokenFile = '';
        /** @var array<string, int> $from */
        $from = [];
        foreach (self::DEFINITIONS as $name => [$env]) {
            if (isset($options[$name])) {
                $value = $options[$name];
                $from[$name] = self::FROM_CODE;
            } elseif (false !== ($value = getenv($env)) && '' !== $value) {
                $from[$name] = self::FROM_ENV; // an empty variable counts as unset
            } elseif (isset($fromIni[$name])) {
                $value = $fromIni[$name];
                $from[$name] = self::FROM_SAVE_PATH;
            } else {
                continue;
            }
            try {
                match ($name) {
                    'url' => $o->urls = self::urlList($value),
                    'token' => $o->token = self::tokenValue((string) $value),
                    'token_file' => $tokenFile = trim((string) $value),
                    'connect_timeout_ms' => $o->connectTimeoutMs = self::intOption($name, $value, 1),
                    'timeout_ms' => $o->timeoutMs = self::intOption($name, $value, 1),
                    'lock' => $o->lock = self::choice($name, $value, [self::LOCK_EXCLUSIVE, self::LOCK_NONE]),
                    'lock_wait_ms' => $o->lockWaitMs = self::intOption($name, $value, 0),
                    'lock_lease_ms' => $o->lockLeaseMs = self::intOption($name, $value, 100),
                    'on_unavailable' => $o->onUnavailable = self::choice($name, $value, [self::ON_UNAVAILABLE_FAIL, self::ON_UNAVAILABLE_EMPTY]),
                    'on_lock_timeout' => $o->onLockTimeout = self::choice($name, $value, [self::ON_LOCK_TIMEOUT_FAIL, self::ON_LOCK_TIMEOUT_READONLY]),
                    'format' => $format = self::choice($name, $value, ['auto', 'msgpack', 'json']),
                    'ca_file' => $o->caFile = self::readableFile($name, (string) $value),
                    'ca_path' => $o->caPath = self::directory($name, (string) $value),
                };
                if ('token_file' === $name && '' !== $tokenFile) {
                    // token and token_file: the one from the higher source wins
                    if (isset($from['token']) && $from['token'] === $from['token_file']) {
                        throw new \InvalidArgumentException('session-service: give "token" or "token_file", not both');
                    }
                    if (!isset($from['token']) || $from['token_file'] < $from['token']) {
                        $o->token = self::tokenFromFile($tokenFile);
                    }
                }
            } catch (\InvalidArgumentException $e) { // the same message, naming where the value came from
                if (self::FROM_CODE === $from[$name]) {
                    throw $e; // given in code: the caller knows where
                }
                throw new \InvalidArgumentException(sprintf('%s (%s)', $e->getMessage(), self::FROM_ENV === $from[$name] ? 'environment variable '.$env : 'session.save_path'));
            }
        }
        if ('msgpack' === $format && !\function_exists('msgpack_unpack')) {
            throw new \InvalidArgumentException('session-service: format "msgpack" needs ext-msgpack');
        }
        $o->msgpack = 'json' !== $format && \function_exists('msgpack_unpack');

        return $o;
    }

    /**
     * The options carried by session.save_path: "URL[,URL...][?key=value&...]",
     * keys being option names, values percent-decoded. A save_path that does not
     * start with http:// or https:// is not for this handler (the files handler's
     * directory): none.
     *
     * @return array<string, string>
     */
    public static function savePathOptions(string $path): array
    {
        if (0 !== strncasecmp(ltrim($path), 'http', 4)) {
            return []; // the usual case, tested as cheaply as possible (every request)
        }
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
                !isset(self::DEFINITIONS[$key]) => sprintf('is not an option (known: %s)', implode(', ', array_diff(array_keys(self::DEFINITIONS), ['url', 'token']))),
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

    private static function tokenValue(string $token): string
    {
        $token = trim($token);
        if (false !== strpbrk($token, "\r\n\0")) { // header injection
            throw new \InvalidArgumentException('session-service: option "token" must be one line');
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
}
