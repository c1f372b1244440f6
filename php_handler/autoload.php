<?php

declare(strict_types=1);

// Composer-free autoloader: `require 'php_handler/autoload.php';`
spl_autoload_register(static function (string $class): void {
    if (str_starts_with($class, 'SessionService\\')) {
        $file = __DIR__.'/src/'.str_replace('\\', '/', substr($class, \strlen('SessionService\\'))).'.php';
        if (is_file($file)) {
            require $file;
        }
    }
});
