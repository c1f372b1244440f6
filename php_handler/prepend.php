<?php

declare(strict_types=1);

/*
 * Shared sessions with no code change: point auto_prepend_file at this file
 * (php.ini, or php_admin_value[auto_prepend_file] in an FPM pool) and configure
 * it with environment variables only (SESSION_SERVICE_URL, SESSION_SERVICE_TOKEN,
 * SESSION_SERVICE_LOCK, SESSION_SERVICE_ON_UNAVAILABLE, ... see docs/php_handler.md).
 *
 * Registers SessionService\Handler before the application runs; the
 * application's own session_start() then uses the service. Nothing is
 * registered when a session is already active (session.auto_start).
 */
require_once __DIR__.'/autoload.php';

(static function (): void {
    if (PHP_SESSION_NONE !== session_status()) {
        return;
    }
    SessionService\Handler::register();
})();
