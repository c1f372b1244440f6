<?php

declare(strict_types=1);

// Composer-free autoloader: `require 'php_handler/autoload.php';`
//
// A class map, not a directory lookup: prepend.php runs on every PHP request, and
// a class is then one array lookup and one require, with no file-system probe. A
// request that starts no session loads Handler and Options only; the others
// (ServiceClient, Codec, Answer) come with the first call to the service.
// (Composer users get the same classes through composer.json's PSR-4 mapping.)
spl_autoload_register(static function (string $class): void {
    $file = match ($class) {
        'SessionService\Handler' => 'Handler.php',
        'SessionService\Options' => 'Options.php',
        'SessionService\ServiceClient' => 'ServiceClient.php',
        'SessionService\Answer' => 'Answer.php',
        'SessionService\Codec' => 'Codec.php',
        default => null,
    };
    if (null !== $file) {
        require __DIR__.'/src/'.$file;
    }
});
