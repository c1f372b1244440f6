<?php

declare(strict_types=1);

/*
 * Shared sessions with no code change: point auto_prepend_file at this file
 * (php.ini, or php_admin_value[auto_prepend_file] in an FPM pool) and configure
 * it with environment variables (SESSION_SERVICE_URL, SESSION_SERVICE_TOKEN, ...)
 * and/or php.ini's session.save_path ("http://a:7070,http://b:7070?token_file=...");
 * see docs/php_handler.md.
 *
 * Registers SessionService\Handler before the application runs; the
 * application's own session_start() then uses the service. Nothing is
 * registered when a session is already active (session.auto_start). It turns
 * session.use_strict_mode on.
 */
require_once __DIR__.'/autoload.php';

(static function (): void {
    if (PHP_SESSION_NONE !== session_status()) {
        return;
    }
    // Strict mode: an id the service does not know (forged, or expired) is replaced
    // instead of being adopted (session fixation). PHP's default is 0; validateId()
    // costs no extra round trip, so there is no reason to leave it off.
    ini_set('session.use_strict_mode', '1');
    SessionService\Handler::register();
})();
