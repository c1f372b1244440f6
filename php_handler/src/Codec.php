<?php

declare(strict_types=1);

namespace SessionService;

/**
 * The wire format of request and answer bodies (docs/api.md): msgpack, session
 * data as bin, or JSON with the data in base64.
 *
 * Encoding uses the format chosen by the options; decoding follows the answer's
 * Content-Type (a JSON answer to a msgpack request is fine) and never trusts the
 * answer: msgpack is unpacked without object instantiation, JSON with a depth limit.
 */
final class Codec
{
    public function __construct(public bool $msgpack)
    {
    }

    /** The media type of the bodies sent, and asked for (Accept). */
    public function mediaType(): string
    {
        return $this->msgpack ? 'application/msgpack' : 'application/json';
    }

    /**
     * A request body.
     *
     * @param array<string, int|string> $body keys of fewer than 32 bytes; "data" is
     *                                        the session's bytes
     */
    public function encode(array $body): string
    {
        if ($this->msgpack) {
            return self::packMap($body);
        }
        if (isset($body['data'])) {
            $body['data'] = base64_encode((string) $body['data']);
        }

        return json_encode($body, \JSON_THROW_ON_ERROR | \JSON_UNESCAPED_SLASHES);
    }

    /**
     * An answer's body: the decoded map, its format (msgpack/json, null if neither)
     * and why it could not be decoded (null if it could).
     *
     * @return array{0:?array<mixed>, 1:?string, 2:?string}
     */
    public static function decode(string $raw, string $contentType): array
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

    /** The session bytes of an answer's "data": msgpack bin/str as is, JSON base64; false if not bytes. */
    public static function data(mixed $data, ?string $format): string|false
    {
        if (!\is_string($data)) {
            return false;
        }

        return 'json' === $format ? base64_decode($data, true) : $data;
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
            $out .= \chr(0xA0 | \strlen($key)).$key; // fixstr
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
            return \chr(0xA0 | $len).$s;
        }

        return ($len < 0x100 ? "\xd9".\chr($len) : ($len < 0x10000 ? "\xda".pack('n', $len) : "\xdb".pack('N', $len))).$s;
    }
}
