<?php

declare(strict_types=1);

require __DIR__.'/bootstrap.php';

shop_start();

if ('POST' === $_SERVER['REQUEST_METHOD']) {
    $item = (string) ($_POST['item'] ?? '');
    if ('clear' === ($_POST['action'] ?? '')) {
        $_SESSION['cart'] = [];
    } elseif (isset(CATALOG[$item])) {
        $_SESSION['cart'][$item] = (int) ($_SESSION['cart'][$item] ?? 0) + 1;
    } else {
        http_response_code(422);
        render('Cart', '<p>Unknown item.</p>');
    }
    done('/shop/cart.php');
}

if (!$_SESSION['cart']) {
    render('Cart', '<p id="cart-empty">Your cart is empty.</p>');
}
$rows = '';
$total = 0;
foreach ($_SESSION['cart'] as $id => $qty) {
    [$name, $cents] = CATALOG[$id];
    $total += $qty * $cents;
    $rows .= '<tr class="line" data-item="'.h($id).'"><td>'.h($name).'</td><td class="qty">'.(int) $qty.'</td><td>'.price($qty * $cents).'</td></tr>';
}
render('Cart', '<table id="cart"><tr><th>Item</th><th>Qty</th><th>Price</th></tr>'.$rows
    .'<tr><th>Total</th><th></th><th id="total">'.price($total).'</th></tr></table>'
    .'<form method="post" action="/shop/cart.php"><input type="hidden" name="action" value="clear"><button id="clear">empty the cart</button></form>');
