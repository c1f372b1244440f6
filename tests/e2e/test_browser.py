"""A real browser (headless Debian Chromium) through the balancer: login and cart persist
over page loads that land on different nodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from stack.runner import Stack


def text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def replaced(page: WebElement) -> Callable[[WebDriver], bool]:
    """Like expected_conditions.staleness_of, for a page being replaced right now:
    Chromium may then answer "Node with given id does not belong to the document"
    instead of a stale-element error, which staleness_of does not expect."""

    def check(_driver: WebDriver) -> bool:
        try:
            page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as error:
            if "does not belong to the document" in str(error):
                return True
            raise
        return False

    return check


def click(driver: WebDriver, element_id: str) -> str:
    """Click a form button (POST, 303, GET) and return the node that served the new page."""
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, element_id).click()
    WebDriverWait(driver, 15).until(replaced(page))
    return text(driver, "node")


def cart(driver: WebDriver) -> dict[str, int]:
    lines = driver.find_elements(By.CSS_SELECTOR, "#cart tr.line")
    return {
        str(line.get_attribute("data-item")): int(line.find_element(By.CLASS_NAME, "qty").text)
        for line in lines
    }


def test_login_and_cart_survive_every_node(stack: Stack, chromium: Any) -> None:
    driver: WebDriver = chromium
    nodes: list[str] = []
    driver.get(stack.url + "/")  # redirects to /shop/index.php
    assert driver.title.startswith("Example shop")
    nodes.append(text(driver, "node"))
    driver.find_element(By.ID, "login-user").send_keys("carol")
    nodes.append(click(driver, "login-submit"))
    assert text(driver, "user") == "carol"
    sid = driver.find_element(By.ID, "sid").get_attribute("title")

    expected: dict[str, int] = {}
    for item in ("apple", "cheese", "apple", "coffee"):
        driver.get(stack.url + "/shop/index.php")
        nodes.append(text(driver, "node"))
        assert text(driver, "user") == "carol"
        nodes.append(click(driver, f"add-{item}"))  # lands on the cart page
        expected[item] = expected.get(item, 0) + 1
        assert cart(driver) == expected
        assert text(driver, "cart-count") == str(sum(expected.values()))

    for _ in range(3):
        driver.get(stack.url + "/shop/counter.php")
        nodes.append(click(driver, "increment"))
    assert text(driver, "counter") == "3"

    seen_after: set[str] = set()
    for _ in range(len(stack.nodes)):
        driver.get(stack.url + "/shop/cart.php")
        seen_after.add(text(driver, "node"))
        assert cart(driver) == expected
        assert text(driver, "user") == "carol"
        assert driver.find_element(By.ID, "sid").get_attribute("title") == sid
    nodes += sorted(seen_after)
    assert seen_after == {n.name for n in stack.nodes}, nodes
    # every request counted once, whichever node served it: 11 page loads and 8 form
    # posts (each a POST and the GET it redirects to)
    assert int(text(driver, "views")) == 11 + 2 * 8

    nodes.append(click(driver, "logout"))
    assert driver.find_elements(By.ID, "login-user")
    assert text(driver, "cart-count") == "0"


def test_symfony_session_over_the_balancer(stack: Stack, chromium: Any) -> None:
    driver: WebDriver = chromium
    driver.get(stack.url + "/symfony/")
    nodes = {text(driver, "node")}
    for clicks in range(1, 4):
        nodes.add(click(driver, "click"))
        assert text(driver, "clicks") == str(clicks)
        flashes = [f.text for f in driver.find_elements(By.CLASS_NAME, "flash")]
        assert len(flashes) == 1 and flashes[0].startswith(f"click {clicks} recorded by web")
    driver.refresh()
    assert not driver.find_elements(By.CLASS_NAME, "flash")  # a flash is shown once
    assert len(nodes) >= 2, nodes
